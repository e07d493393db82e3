"""Training: templates and labels, data errors, stage policies, `vtc train`, resume, DDP, PEFT and bitsandbytes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageTextToText, LlamaForCausalLM

from tests.golden import COCO_DIR, REPO_ROOT
from tests.helpers import VARIANTS
from visual_token_compression.tools.tiny import build_tiny, byte_tokenizer, tiny_text_config, tiny_vision_config
from visual_token_compression.tools.training import (
    CompressedVLMDataCollator,
    SampleError,
    apply_stage,
    load_training_dataset,
)
from visual_token_compression.tools.training.train import main as train_main

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def conversation(question: str, answer: str, image: bool = True) -> list[dict]:
    return [{"from": "human", "value": ("<image>\n" if image else "") + question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    """A tiny CLIP tower, a tiny Llama with its tokenizer, and a small LLaVA JSON dataset, all on disk."""
    root = tmp_path_factory.mktemp("parts")
    tokenizer = byte_tokenizer(extra_special_tokens=())
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_text_config(vocab_size=len(tokenizer))).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    AutoModel.from_config(tiny_vision_config()).save_pretrained(root / "tower")
    (root / "images").mkdir()
    records = []
    for index in range(12):
        colour = list(COLOURS)[index % 3]
        Image.new("RGB", (36, 28), COLOURS[colour]).save(root / "images" / f"{index}.png")
        records.append({"id": index, "image": f"{index}.png", "conversations": conversation("What colour?", colour)})
    (root / "data.json").write_text(json.dumps(records))
    return root


def tiny_train_args(parts: Path, output: Path, stage: int, *extra: str) -> list[str]:
    source = (
        ["--init_from", str(parts / "stage1")]
        if stage == 2
        else [
            "--vision_tower",
            str(parts / "tower"),
            "--language_model",
            str(parts / "llm"),
            "--config_overrides",
            '{"compressor_head_dim": 8}',
        ]
    )
    return [
        "--stage",
        str(stage),
        *source,
        "--data",
        str(parts / "data.json"),
        "--image_folder",
        str(parts / "images"),
        "--output_dir",
        str(output),
        "--per_device_train_batch_size",
        "2",
        "--use_cpu",
        "True",
        "--logging_steps",
        "1",
        "--seed",
        "7",
        "--disable_tqdm",
        "True",
        *extra,
    ]


def supervised_text(processor, batch: dict, row: int = 0) -> str:
    ids = batch["input_ids"][row][batch["labels"][row] != -100]
    return processor.tokenizer.decode(ids)


# --- templates and labels -------------------------------------------------------------------------------------


def test_plain_template_supervises_only_the_caption():
    _, processor = build_tiny("tokenpacker")
    collator = CompressedVLMDataCollator(processor, template="plain")
    record = {"image": Image.new("RGB", (9, 9)), "conversations": conversation("Describe.", "a red square")}
    batch = collator([record])
    assert supervised_text(processor, batch) == "a red square\n"
    assert processor.tokenizer.decode(batch["input_ids"][0]).endswith("<image>" * 16 + "a red square\n")


def test_vicuna_template_supervises_assistant_turns_and_eos_and_matches_the_chat_template():
    _, processor = build_tiny("tokenpacker")
    turns = conversation("What is it?", "A cat.") + [
        {"from": "human", "value": "Colour?"},
        {"from": "gpt", "value": "Black."},
    ]
    batch = CompressedVLMDataCollator(processor, template="vicuna_v1")(
        [{"image": Image.new("RGB", (9, 9)), "conversations": turns}]
    )
    assert supervised_text(processor, batch) == " A cat.</s> Black.</s>"
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Colour?"},
        {"role": "assistant", "content": "Black."},
    ]
    rendered = processor.apply_chat_template(messages, tokenize=False)
    expected = processor(images=Image.new("RGB", (9, 9)), text=rendered)["input_ids"][0]
    assert batch["input_ids"][0].tolist() == expected, "training text must be what inference renders"


# --- data sources and bad samples -----------------------------------------------------------------------------


def test_missing_image_fails_fast_naming_index_and_path(parts, tmp_path):
    records = json.loads((parts / "data.json").read_text())
    records[3]["image"] = "gone.png"
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset = load_training_dataset(str(tmp_path / "data.json"))
    _, processor = build_tiny("tokenpacker")
    collator = CompressedVLMDataCollator(processor, image_folder=str(parts / "images"))
    with pytest.raises(SampleError, match=r"sample 3 \(gone.png\).*not found"):
        collator([dataset[2], dataset[3]])


def test_bad_samples_can_be_skipped_with_a_warning(parts, tmp_path, caplog):
    (tmp_path / "broken.png").write_text("not a png")
    _, processor = build_tiny("tokenpacker")
    collator = CompressedVLMDataCollator(processor, image_folder=str(parts / "images"), on_error="skip")
    good = {"__index__": 0, "image": "0.png", "conversations": conversation("Q?", "red")}
    bad = {"__index__": 1, "image": str(tmp_path / "broken.png"), "conversations": conversation("Q?", "red")}
    batch = collator([good, bad])
    assert batch["input_ids"].shape[0] == 1
    assert "sample 1" in caplog.text and "broken.png" in caplog.text


def test_truncation_through_image_tokens_names_the_sample():
    _, processor = build_tiny("tokenpacker")
    collator = CompressedVLMDataCollator(processor, model_max_length=120)
    record = {"__index__": 5, "image": Image.new("RGB", (9, 9)), "conversations": conversation("Q", "A")}
    with pytest.raises(SampleError, match=r"sample 5 .*truncation kept \d+ of its 16 '<image>' tokens"):
        collator([record])


def test_placeholder_without_image_is_reported():
    _, processor = build_tiny("tokenpacker")
    record = {"__index__": 9, "image": None, "conversations": conversation("Q", "A")}
    with pytest.raises(SampleError, match=r"sample 9 .*1 '<image>' tokens but the sample has 0 image"):
        CompressedVLMDataCollator(processor)([record])


@pytest.mark.parametrize("streaming", [False, True])
def test_any_datasets_dataset_with_image_and_conversation_columns(streaming):
    images = [Image.new("RGB", (20, 20), colour) for colour in COLOURS.values()]
    source = datasets.Dataset.from_dict(
        {"picture": images, "messages": [conversation("Colour?", name) for name in COLOURS]},
        features=datasets.Features(
            {
                "picture": datasets.Image(),
                "messages": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
            }
        ),
    )
    if streaming:
        source = source.to_iterable_dataset()
    dataset = load_training_dataset(source, image_column="picture", conversation_column="messages")
    records = list(dataset)
    assert [record["__index__"] for record in records] == [0, 1, 2]
    _, processor = build_tiny("tokenpacker")
    batch = CompressedVLMDataCollator(processor)(records)
    assert batch["pixel_values"].shape[0] == 3
    assert [supervised_text(processor, batch, row).strip() for row in range(3)] == [f"{n}</s>" for n in COLOURS]


# --- stage policies -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize(("model_type", "config_kwargs"), VARIANTS, ids=lambda v: str(v))
def test_stage_policy_changes_exactly_the_stage_modules(model_type, config_kwargs, stage):
    model, processor = build_tiny(model_type, **config_kwargs)
    model.train()
    apply_stage(model, stage)
    records = [
        {"image": Image.new("RGB", (30, 20), COLOURS["red"]), "conversations": conversation("Colour?", "red")},
        {"image": None, "conversations": conversation("Say hi.", "hi", image=False)},
    ]
    batch = CompressedVLMDataCollator(processor, template="vicuna_v1")(records)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch).loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(n.startswith("model.compressor.") for n in changed)
    assert not any(n.startswith("model.vision_tower.") for n in changed)
    llm_changed = any(n.startswith(("model.language_model.", "lm_head.")) for n in changed)
    assert llm_changed == (stage == 2)


def test_text_only_batches_still_reach_every_compressor_parameter():
    """What keeps ZeRO-3 from hanging and DDP from complaining on batches without images."""
    for model_type, config_kwargs in VARIANTS:
        model, processor = build_tiny(model_type, **config_kwargs)
        model.train()
        apply_stage(model, 1)
        batch = CompressedVLMDataCollator(processor)(
            [{"image": None, "conversations": conversation("Hi", "Hello", image=False)}]
        )
        model(**batch).loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{model_type}: {missing[:3]}"


# --- vtc train ------------------------------------------------------------------------------------------------


def test_vtc_train_stage_1_then_stage_2(parts):
    train_main(tiny_train_args(parts, parts / "stage1", 1, "--max_steps", "3"))
    stage1 = load_file(parts / "stage1" / "model.safetensors")
    fresh = AutoModelForImageTextToText.from_pretrained(parts / "stage1")
    assert fresh.config.model_type == "tokenpacker"
    llm = LlamaForCausalLM.from_pretrained(parts / "llm")
    # stage 1 kept the LLM and the tower as they were loaded
    torch.testing.assert_close(
        stage1["model.language_model.layers.0.mlp.up_proj.weight"], llm.model.layers[0].mlp.up_proj.weight
    )
    tower = AutoModel.from_pretrained(parts / "tower")
    torch.testing.assert_close(
        stage1["model.vision_tower.embeddings.patch_embedding.weight"], tower.embeddings.patch_embedding.weight
    )

    train_main(tiny_train_args(parts, parts / "stage2", 2, "--max_steps", "2", "--learning_rate", "1e-2"))
    stage2 = load_file(parts / "stage2" / "model.safetensors")
    assert not torch.equal(
        stage2["model.language_model.layers.0.mlp.up_proj.weight"],
        stage1["model.language_model.layers.0.mlp.up_proj.weight"],
    )
    assert torch.equal(
        stage2["model.vision_tower.embeddings.patch_embedding.weight"],
        stage1["model.vision_tower.embeddings.patch_embedding.weight"],
    )


def test_vtc_train_refuses_to_overwrite_a_run(parts, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        train_main(tiny_train_args(parts, tmp_path, 1, "--max_steps", "1"))
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_resume_after_a_kill_ends_with_the_uninterrupted_weights(parts, tmp_path):
    """The child dies (`os._exit`, no cleanup, like a kill) right after checkpoint-8 is written: a callback, not a
    race between a poll and the training loop, decides where the run stops."""
    steps = ["--max_steps", "40", "--save_steps", "4", "--learning_rate", "5e-3", "--gradient_checkpointing", "False"]
    train_main(tiny_train_args(parts, tmp_path / "straight", 1, *steps))

    exit_code = 75
    script = textwrap.dedent(
        f"""
        import os, sys
        from functools import partial
        from transformers import Trainer, TrainerCallback
        import visual_token_compression.tools.training.train as train

        class DieAfterCheckpoint8(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == 8:
                    os._exit({exit_code})

        train.Trainer = partial(Trainer, callbacks=[DieAfterCheckpoint8()])
        train.main(sys.argv[1:])
        """
    )
    killed = tmp_path / "killed"
    command = [sys.executable, "-c", script, *tiny_train_args(parts, killed, 1, *steps)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert (killed / "checkpoint-8" / "trainer_state.json").exists()
    assert not (killed / "checkpoint-12").exists() and not (killed / "model.safetensors").exists()

    train_main(tiny_train_args(parts, tmp_path / "killed", 1, *steps, "--resume_from_checkpoint", "last"))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "model.safetensors")
    for name in (n for n in straight if n.startswith("model.compressor.")):
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_ddp_step_with_torchrun(parts, tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "visual_token_compression.tools.training.train",
        *tiny_train_args(parts, tmp_path / "ddp", 1, "--max_steps", "2", "--ddp_backend", "gloo"),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (tmp_path / "ddp" / "model.safetensors").exists()


# --- PEFT and bitsandbytes ------------------------------------------------------------------------------------


def test_lora_touches_only_the_language_model():
    from peft import get_peft_model

    from visual_token_compression.tools.training.adapters import llm_lora_config

    model, processor = build_tiny("tokenpacker")
    peft_model = get_peft_model(model, llm_lora_config(r=4))
    lora = [name for name, _ in peft_model.named_parameters() if "lora_" in name]
    assert lora and all(".language_model." in name for name in lora)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert set(trainable) == set(lora) | {n for n in trainable if ".compressor." in n}
    assert any(".compressor." in n for n in trainable), "the compressor trains alongside LoRA"
    inputs = processor(images=Image.new("RGB", (20, 20)), text="<image> hi", return_tensors="pt")
    peft_model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert (
        peft_model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2
    )


@pytest.mark.parametrize("bits", [4, 8])
def test_bitsandbytes_quantizes_the_llm_only(bits, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional extra (quant)")
    from visual_token_compression.tools.training.adapters import quantization_config

    model, processor = build_tiny("tokenpacker")
    model.save_pretrained(tmp_path)
    quantized = AutoModelForImageTextToText.from_pretrained(
        tmp_path, quantization_config=quantization_config(bits), device_map="cpu"
    )
    kinds = {
        name: type(module).__name__
        for name, module in quantized.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    assert all(
        kind.startswith("Linear") and kind != "Linear" for name, kind in kinds.items() if ".language_model." in name
    )
    assert all(
        kind == "Linear"
        for name, kind in kinds.items()
        if ".vision_tower." in name or ".compressor." in name or name == "lm_head"
    )
    inputs = processor(images=Image.new("RGB", (20, 20)), text="<image> hi", return_tensors="pt")
    assert torch.isfinite(quantized(**inputs).logits).all()


# --- real data --------------------------------------------------------------------------------------------------


def test_stage_1_on_real_coco_captions_lowers_the_loss(parts, tmp_path):
    """Real photos and captions: the held-out caption loss (all 51 images, fixed) falls as the compressor learns."""
    captions = json.loads((COCO_DIR / "captions.json").read_text())
    records = [
        {"id": i, "image": str(COCO_DIR / item["file"]), "conversations": conversation("Describe.", caption)}
        for i, item in enumerate(captions["images"])
        for caption in item["captions"][:2]
    ]
    (tmp_path / "train.json").write_text(json.dumps(records[1::2]))
    (tmp_path / "eval.json").write_text(json.dumps(records[::2]))
    args = tiny_train_args(
        parts,
        tmp_path / "run",
        1,
        "--max_steps",
        "30",
        "--learning_rate",
        "2e-2",
        "--per_device_train_batch_size",
        "4",
        "--eval_data",
        str(tmp_path / "eval.json"),
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "30",
        "--eval_on_start",
        "True",
        "--per_device_eval_batch_size",
        "17",
    )
    args[args.index("--data") + 1] = str(tmp_path / "train.json")
    trainer = train_main(args)
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(eval_losses) == 2
    assert eval_losses[1] < eval_losses[0] - 0.02, eval_losses


def test_shipped_scale_out_configs():
    """DeepSpeed ZeRO-2/3 and FSDP configs parse, and FSDP wraps every layer class our models keep whole."""
    configs = REPO_ROOT / "configs"
    for name, stage in (("zero2.json", 2), ("zero3.json", 3)):
        config = json.loads((configs / name).read_text())
        assert config["zero_optimization"]["stage"] == stage
        assert config["train_micro_batch_size_per_gpu"] == "auto"
    fsdp = json.loads((configs / "fsdp.json").read_text())
    assert fsdp["use_orig_params"], "stage 1 freezes most parameters: FSDP needs use_orig_params"
    for vision in ("clip", "siglip"):
        for text in ("llama", "qwen2"):
            model, _ = build_tiny("tokenpacker", vision=vision, text=text)
            layers = {name for name in model._no_split_modules if name.endswith("Layer")}
            assert layers and layers <= set(fsdp["transformer_layer_cls_to_wrap"]), model._no_split_modules
