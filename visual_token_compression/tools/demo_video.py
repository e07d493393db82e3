"""`vtc demo --video`: VoCo-LLaMA on video, against the same model blind to frame order and against LLaVA keeping
every frame token, on procedural clips of a moving shape (`training/synthetic_video.py`). No downloads. See
docs/demo.md#the-video-demo.

Three models, the same parts, data, steps and rates:

* VoCo-LLaMA video: each frame compressed into its own `num_voco_tokens` VoCo tokens, compact positions (frame order
  in the positions): T x k columns cached per clip.
* the order-blind control: the same, with `video_positions="restart"` (every frame at the first frame's positions).
  Opposite directions replay the same frames in reverse, so it can answer at most half of the direction questions.
* the uncompressed baseline: transformers' `LlavaForConditionalGeneration` with the T frames as T images (every patch
  of every frame cached), built and trained as `vtc demo`'s baseline.

The recipe is VoCo-LLaMA's: stage 1 (compressor only) on frame captions, stage 2 (compressor + LLM) on questions about
single frames, which makes the image model, then `vtc train --stage 3` (compressor + LLM) on the video questions. Each
training frame or clip is one conversation asking all its questions, so one pass over its pixels trains them all. The
parts are `vtc demo`'s (a random tiny CLIP tower with fixed grid positions, frozen; a random tiny Llama with a
word-level tokenizer), with a coarser patch grid (see docs/demo.md). Answers are the greedy first token of `generate`.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from ..compat import output_cache
from .benchmarks.measure import cache_bytes
from .benchmarks.report import human_bytes
from .demo import check_save_folder, compose, fresh_projection, save_trained, training_flags, write_parts
from .demo_baseline import compose_llava, train_llava_stage
from .demo_report import Entry
from .tiny import tiny_vision_config
from .training.data import CompressedVLMDataCollator
from .training.synthetic_video import VIDEO_QUESTIONS, make_video_dataset
from .training.train import main as train_main

NUM_TRAIN, NUM_TEST = 2000, 200  # clips, in reversal pairs
NUM_FRAMES, SHAPE_SIZE = 8, 12
# The parts (docs/demo.md#the-video-demo says why each differs from `vtc demo`'s): a 4x4 patch grid (16 tokens per
# frame), the tower read at its embeddings with 3 times stronger grid positions (where the shape is survives the
# compression into 2 tokens), and an LLM initialised at 1 / sqrt(width) whose heads are 16 wide (the tiny config's
# 8, kept when `vtc demo` widens it to 64, leaves rotary positions 4 frequencies to tell the frames' order by).
PATCH_SIZE, POSITION_SCALE = 8, 3.0
LLM_CONFIG = {"initializer_range": 0.125, "head_dim": 16}
# The tower's embeddings are its hidden_states[0], indexed from the end: transformers 5.24's LLaVA takes a
# `vision_feature_layer` of 0 for "no hidden states asked" (`select_hidden_states`) and fails.
CONFIG = {"num_voco_tokens": 2, "vision_feature_layer": -(tiny_vision_config().num_hidden_layers + 1)}
# The control: every frame of a video at the first frame's positions (`VoCoLlamaConfig.video_positions`).
CONTROL = {"video_positions": "restart"}
EVAL_BATCH = 25
METHODS = ("voco_llama video", "voco_llama (restart positions)", "llava (all frame tokens)")


@dataclass(frozen=True)
class Stage:
    """One `vtc train` run of the recipe, the same for every model."""

    name: str
    stage: int  # `vtc train --stage`
    split: str  # the data
    template: str
    steps: int
    learning_rate: float


# VoCo-LLaMA's recipe: the image model (stage 1 on frame captions, stage 2 on questions about single frames), then
# stage 3 on the clips, first where the shape is at the start and at the end, then every question (docs/demo.md).
IMAGE_STAGES = (
    Stage("frame captions, compressor only", 1, "captions", "plain", 125, 1e-3),
    Stage("frame questions, compressor + LLM", 2, "frames", "vicuna_v1", 1500, 1e-3),
)
VIDEO_STAGES = (
    Stage("start and end of the clips, compressor + LLM", 3, "paths", "vicuna_v1", 250, 1e-3),
    Stage("every clip question, compressor + LLM", 3, "questions", "vicuna_v1", 350, 1e-3),
)


@dataclass
class VideoEntry(Entry):
    """A model of the video comparison: `visual_tokens` are the KV columns it caches per clip, `kv_bytes` the KV cache
    of a whole prompt, and `scores` the right answers and questions asked per question kind."""

    scores: dict[str, tuple[int, int]] = field(default_factory=dict)

    def kind_accuracy(self, kind: str) -> tuple[float, float]:
        """(accuracy, binomial standard error) on one kind of question."""
        right, asked = self.scores[kind]
        part = Entry(self.method, self.model, self.processor, accuracy=right / asked, answered=asked)
        return part.accuracy, part.standard_error


def frames_as_images(record: dict, num_frames: int = NUM_FRAMES) -> dict:
    """A video record for a model that takes no videos: the clip's first `num_frames` frames as images, one
    `<image>` each."""
    frames = [f"{record['video']}/{t:02d}.png" for t in range(num_frames)]
    turns = [
        {**turn, "value": turn["value"].replace("<video>", "<image>" * num_frames)} for turn in record["conversations"]
    ]
    return {"id": record["id"], "image": frames, "conversations": turns}


def stage_data(data: dict, stage: Stage, as_images: bool, work: Path) -> str:
    """The stage's data file; video splits rewritten with `frames_as_images` for a model that takes no videos."""
    if not as_images or stage.split not in ("paths", "questions"):
        return str(data[stage.split])
    path = work / f"{stage.split}-as-images.json"
    if not path.exists():
        records = json.loads(Path(data[stage.split]).read_text())
        path.write_text(json.dumps([frames_as_images(record) for record in records]))
    return str(path)


def scaled(stage: Stage, steps_scale: float) -> int:
    return max(1, round(stage.steps * steps_scale))


def train_voco(
    name: str, source: str, stages: tuple[Stage, ...], data: dict, work: Path, scale: float, seed: int
) -> str:
    """`stages` through `vtc train`, each from the last one's output; returns the last output folder."""
    for stage in stages:
        steps = scaled(stage, scale)
        print(f"\n== {name}: stage {stage.stage}, {stage.name}, {steps} steps ==")
        output = work / f"{re.sub('[^a-z]+', '-', name)}-{stage.split}"
        argv = ["--stage", str(stage.stage), "--init_from", source, "--data", stage_data(data, stage, False, work)]
        argv += ["--template", stage.template, "--image_folder", str(data["clips"]), "--num_frames", str(NUM_FRAMES)]
        train_main([*argv, *training_flags(stage.stage, steps, output, seed, stage.learning_rate)])
        source = str(output)
    return source


def restarted(folder: str, output: Path) -> str:
    """The trained image model with the control's positions for videos (no weight depends on them)."""
    AutoModelForImageTextToText.from_pretrained(folder, **CONTROL).save_pretrained(output)
    AutoProcessor.from_pretrained(folder).save_pretrained(output)
    return str(output)


def train_llava(tower: str, language_model: str, data: dict, work: Path, steps_scale: float, seed: int):
    """LLaVA through the same stages, frames as images; stage 3 trains stage 2's modules, as VoCo's does."""
    torch.manual_seed(seed)
    model, processor = compose_llava(tower, language_model, CONFIG["vision_feature_layer"])
    fresh_projection(model.model.multi_modal_projector)
    for index, stage in enumerate(IMAGE_STAGES + VIDEO_STAGES):
        steps = scaled(stage, steps_scale)
        print(f"\n== llava (all frame tokens): stage {stage.stage}, {stage.name}, {steps} steps ==")
        flags = training_flags(stage.stage, steps, work / f"llava-{index}", seed, stage.learning_rate)
        path = stage_data(data, stage, True, work)
        train_llava_stage(model, processor, min(stage.stage, 2), path, str(data["clips"]), flags)
    return model, processor


def prompt(entry: VideoEntry, record: dict, clips: str, num_frames: int = NUM_FRAMES) -> dict:
    """A held-out record's prompt as the entry's model takes it (the clip's frames as images for a model that takes
    no videos), exactly as training renders it, cut before the answer."""
    collator = CompressedVLMDataCollator(entry.processor, image_folder=clips, num_frames=num_frames)
    if getattr(entry.processor, "video_token_id", None) is None:  # set by processors that take videos
        record = frames_as_images(record, num_frames)
    features = collator.encode(record)
    answer_start = int((features["labels"][0] != -100).nonzero()[0])
    features = {key: value for key, value in features.items() if key != "labels"}
    return {**features, **{key: features[key][:, :answer_start] for key in ("input_ids", "attention_mask")}}


def evaluate(entry: VideoEntry, records: list[dict], clips: str):
    """The greedy first answer token of `generate` for every held-out question; fills the entry's scores."""
    padder = CompressedVLMDataCollator(entry.processor, padding_side="left")
    entry.model.eval()
    tokenizer = entry.processor.tokenizer
    right, asked = dict.fromkeys(VIDEO_QUESTIONS, 0), dict.fromkeys(VIDEO_QUESTIONS, 0)
    for start in tqdm(range(0, len(records), EVAL_BATCH), desc=f"{entry.method}: answering held-out questions"):
        chunk = records[start : start + EVAL_BATCH]
        batch = padder.pad([prompt(entry, record, clips) for record in chunk])
        with torch.inference_mode():
            output = entry.model.generate(**batch, max_new_tokens=1, do_sample=False)
        for record, token in zip(chunk, output[:, -1].tolist(), strict=True):
            question, reference = (turn["value"] for turn in record["conversations"])
            kind = next(kind for kind, (text, _) in VIDEO_QUESTIONS.items() if question.endswith(text))
            asked[kind] += 1
            right[kind] += tokenizer.decode([token]).strip() == reference
    entry.scores = {kind: (right[kind], asked[kind]) for kind in VIDEO_QUESTIONS}
    entry.answered = sum(asked.values())
    entry.accuracy = sum(right.values()) / entry.answered


def measure_cache(entry: VideoEntry, record: dict, clips: str):
    """KV bytes of one prompt after its prefill, and the columns the clip takes in the cache: the cache with the whole
    clip minus the cache with one frame fewer, times the frames (the text, kept or sealed, cancels out)."""
    columns = []
    for num_frames in (NUM_FRAMES, NUM_FRAMES - 1):
        with torch.inference_mode():
            output = entry.model(**prompt(entry, record, clips, num_frames), use_cache=True, logits_to_keep=1)
        cache = output_cache(output)
        columns.append(cache.layers[0].keys.shape[-2])
        if num_frames == NUM_FRAMES:
            entry.kv_bytes = cache_bytes(cache)
    entry.visual_tokens = NUM_FRAMES * (columns[0] - columns[1])


def table(entries: list[VideoEntry], chance: dict[str, float]) -> str:
    """A markdown table of the comparison, one row per model and one for chance."""
    kinds = list(VIDEO_QUESTIONS)
    lines = [
        "| method | KV columns / clip | KV cache / prompt | "
        + " | ".join(f"{kind} (± s.e.)" for kind in kinds)
        + " |",
        "|---|---|---|" + "---|" * len(kinds),
    ]
    for entry in entries:
        scores = " | ".join("{:.3f} ± {:.3f}".format(*entry.kind_accuracy(kind)) for kind in kinds)
        lines.append(f"| {entry.method} | {entry.visual_tokens} | {human_bytes(entry.kv_bytes)} | {scores} |")
    lines.append("| chance | | | " + " | ".join(f"{chance[kind]:.3f}" for kind in kinds) + " |")
    return "\n".join(lines) + "\n"


def plot(entries: list[VideoEntry], chance: dict[str, float], path: str | Path):
    """Accuracy per question kind (standard errors, chance dashed) per model, and the KV columns each caches per
    clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(VIDEO_QUESTIONS)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(entries)
    for index, entry in enumerate(entries):
        scores = [entry.kind_accuracy(kind) for kind in kinds]
        offsets = [position + (index - (len(entries) - 1) / 2) * width for position in range(len(kinds))]
        left.bar(offsets, [s[0] for s in scores], width, yerr=[s[1] for s in scores], capsize=3, label=entry.method)
        right.bar(index, entry.visual_tokens)
    for position, kind in enumerate(kinds):
        label = "chance" if position == 0 else None
        left.hlines(chance[kind], position - 0.45, position + 0.45, colors="grey", linestyles="--", label=label)
    left.set_xticks(range(len(kinds)), kinds)
    left.set_ylim(0, 1.05)
    left.set_ylabel("held-out accuracy (± 1 s.e.)")
    left.legend(fontsize=8)
    right.set_xticks(range(len(entries)), [entry.method for entry in entries], rotation=15, fontsize=7)
    right.set_yscale("log", base=2)
    right.set_ylabel("KV columns cached per clip")
    figure.suptitle("vtc demo --video: VoCo-LLaMA video vs order-blind control vs every frame token kept")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_video_demo(
    save: str | None = None,
    overwrite: bool = False,
    steps_scale: float = 1.0,
    seed: int = 0,
    num_train: int = NUM_TRAIN,
    num_test: int = NUM_TEST,
) -> list[VideoEntry]:
    """Trains the three models and compares them; returns them, VoCo-LLaMA video first (the last line printed is
    its accuracy per question kind)."""
    check_save_folder(save, overwrite)
    with tempfile.TemporaryDirectory(prefix="vtc-demo-video-") as work:
        work = Path(work)
        data = make_video_dataset(
            work / "data", num_train, num_test, num_frames=NUM_FRAMES, shape_size=SHAPE_SIZE, seed=seed
        )
        splits = ("captions", "frames", "questions")
        tower, llm = write_parts(work / "parts", "tiny", data, seed, PATCH_SIZE, POSITION_SCALE, splits, **LLM_CONFIG)
        print(f"methods: {', '.join(METHODS)}")
        print(f"data: {num_train} clips of {NUM_FRAMES} frames with captions and questions, {num_test} held out")

        # The image stages do not depend on the video positions: both VoCo models continue the same image model.
        composed = compose("voco_llama", tower, llm, work / "voco", seed, **CONFIG)
        image = train_voco("voco_llama (image)", composed, IMAGE_STAGES, data, work, steps_scale, seed)
        control = restarted(image, work / "voco-restart")
        folders = {
            METHODS[0]: train_voco(METHODS[0], image, VIDEO_STAGES, data, work, steps_scale, seed),
            METHODS[1]: train_voco(METHODS[1], control, VIDEO_STAGES, data, work, steps_scale, seed),
        }
        entries = [
            VideoEntry(
                name, AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
            )
            for name, folder in folders.items()
        ]
        entries.append(VideoEntry(METHODS[2], *train_llava(tower, llm, data, work, steps_scale, seed)))

        test = json.loads(Path(data["test"]).read_text())
        print()
        for entry in entries:
            evaluate(entry, test, str(data["clips"]))
            measure_cache(entry, test[0], str(data["clips"]))
        report = table(entries, data["chance"])
        print("\n" + report)
        if save is not None:
            plot(entries, data["chance"], save_trained(folders[METHODS[0]], save, report) / "demo.png")
            print(
                f"saved the trained VoCo-LLaMA video model and processor to {save}, with the table and plot (demo.png)"
            )
    accuracies = {kind: entries[0].kind_accuracy(kind)[0] for kind in VIDEO_QUESTIONS}
    print(f"{METHODS[0]} accuracy: " + ", ".join(f"{kind} {value:.3f}" for kind, value in accuracies.items()))
    return entries
