"""`vtc convert` on tiny checkpoints written in the originals' layouts (key names from the specs' tables) and on a
tiny llava-hf model: converted models must give the reference model's logits."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

from tests.helpers import ORIGINAL_COMPRESSOR_NAMES
from visual_token_compression import (
    MODEL_TYPES,
    TokenPackerProcessor,
    VoCoLlamaConfig,
    VoCoLlamaForConditionalGeneration,
    VoCoLlamaProcessor,
)
from visual_token_compression.tools.conversion import convert_cli
from visual_token_compression.tools.tiny import build_tiny, byte_tokenizer, tiny_text_config, tiny_vision_config

IMAGE = Image.new("RGB", (70, 40), (200, 60, 30))
PROMPT = "USER: <image>\nWhat is this? ASSISTANT:"

HEAD_DIM = ["--config", "compressor_head_dim=8"]  # the original's 128-wide heads do not fit a 32-wide tower


def original_state_dict(model, method: str, drop_rows: int, with_tower: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights under the original's names, without the last `drop_rows` vocabulary rows."""
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    for suffix in ("weight", "bias"):
        q = ours.pop(f"model.compressor.attn.q_proj.{suffix}", None)
        if q is not None:  # nn.MultiheadAttention packs q, k, v
            k, v = (
                ours.pop(f"model.compressor.attn.k_proj.{suffix}"),
                ours.pop(f"model.compressor.attn.v_proj.{suffix}"),
            )
            ours[f"model.compressor.attn.in_proj_{suffix}"] = torch.cat([q, k, v])
    original = {}
    for key, tensor in ours.items():
        if key.startswith("model.compressor."):
            rest = key.removeprefix("model.compressor.")
            ours_prefix = next(p for p in ORIGINAL_COMPRESSOR_NAMES[method] if rest.startswith(p))
            original[
                "model.mm_projector." + ORIGINAL_COMPRESSOR_NAMES[method][ours_prefix] + rest[len(ours_prefix) :]
            ] = tensor
        elif key.startswith("model.language_model."):
            original["model." + key.removeprefix("model.language_model.")] = tensor
        elif key == "lm_head.weight":
            original[key] = tensor
        elif with_tower:
            rest = key.removeprefix("model.vision_tower.").removeprefix("vision_model.")
            original["model.vision_tower.vision_tower.vision_model." + rest] = tensor
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        original[key] = original[key][:-drop_rows].contiguous()
    return original


def write_original(folder, weights: dict, config: dict, tokenizer, shards: int = 2, safetensors: bool = False):
    """An original checkpoint folder: config.json, tokenizer and weights in `shards` files."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(folder)
    keys = sorted(weights)
    for index in range(shards):
        part = {k: weights[k] for k in keys[index::shards]}
        name = f"pytorch_model-{index + 1:05d}-of-{shards:05d}"
        if safetensors:
            save_file(part, folder / f"{name}.safetensors")
        else:
            torch.save(part, folder / f"{name}.bin")
    return folder


def llava_config(model, **fields) -> dict:
    """config.json of an original LLaVA-1.5 fork: the LLaMA fields plus mm_* fields."""
    text = model.config.text_config.to_dict()
    llama = {k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
    llama.update(num_key_value_heads=text["num_key_value_heads"], vocab_size=text["vocab_size"] - 1)
    return {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        **llama,
        "mm_hidden_size": model.config.vision_config.hidden_size,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_use_im_start_end": False,
        "image_aspect_ratio": "pad",
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        "torch_dtype": "float32",
        **fields,
    }


def assert_same_logits(converted_dir, reference, reference_processor, vocab: int):
    """Same input ids and, over the original vocabulary, the same logits as the reference model."""
    processor = AutoProcessor.from_pretrained(converted_dir)
    model = AutoModelForImageTextToText.from_pretrained(converted_dir).eval()
    inputs = processor(images=IMAGE, text=PROMPT, return_tensors="pt")
    expected_inputs = reference_processor(images=IMAGE, text=PROMPT, return_tensors="pt")
    assert inputs["input_ids"].tolist() == expected_inputs["input_ids"].tolist()
    with torch.no_grad():
        logits = model(**inputs).logits[..., :vocab]
        expected = reference(**expected_inputs).logits[..., :vocab]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    return model, processor


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    """The tiny CLIP tower every build_tiny model shares (seeded), saved as its own checkpoint."""
    model, _ = build_tiny("tokenpacker")
    folder = tmp_path_factory.mktemp("clip")
    model.model.vision_tower.save_pretrained(folder)
    return folder


def test_tokenpacker_hd_infers_patch_num_and_scale_factor_from_the_name(tmp_path, tower_dir, caplog):
    reference, _ = build_tiny("tokenpacker", patch_num=16)
    tokenizer = byte_tokenizer(extra_special_tokens=())
    checkpoint = write_original(
        tmp_path / "TokenPacker-HD-7b-16patch-16token",
        original_state_dict(reference, "tokenpacker", drop_rows=1),
        llava_config(reference, image_aspect_ratio="slice"),
        tokenizer,
    )
    with caplog.at_level(logging.WARNING):
        status = convert_cli(["tokenpacker", "--checkpoint", str(checkpoint), "--vision-tower", str(tower_dir),
                              "--output", str(tmp_path / "out"), "--config", "compressor_head_dim=8"])  # fmt: skip
    assert status == 0
    assert "patch_num" in caplog.text and "scale_factor" in caplog.text
    reference_processor = TokenPackerProcessor.from_config(reference.config, byte_tokenizer(), row_separator="<unk>")
    model, processor = assert_same_logits(tmp_path / "out", reference, reference_processor, vocab=len(tokenizer))
    assert (model.config.patch_num, model.config.scale_factor) == (16, 2)
    assert processor.is_hd and processor.row_separator == "<unk>"


def test_quecc_from_safetensors_shards(tmp_path, tower_dir):
    reference, reference_processor = build_tiny("quecc")
    fields = {
        "mm_vision_token_compression_type": "quecc",
        "mm_vision_token_compression_kernel_size": reference.config.kernel_size,
        "mm_vision_token_compression_stride": reference.config.stride,
        "mm_vision_output_text_embedding_size": reference.config.text_config.hidden_size,
    }
    checkpoint = write_original(
        tmp_path / "quecc",
        original_state_dict(reference, "quecc", drop_rows=1),
        llava_config(reference, **fields),
        byte_tokenizer(extra_special_tokens=()),
        shards=3,
        safetensors=True,
    )
    assert convert_cli(["quecc", "--checkpoint", str(checkpoint), "--vision-tower", str(tower_dir),
                        "--output", str(tmp_path / "out")]) == 0  # fmt: skip
    assert_same_logits(tmp_path / "out", reference, reference_processor, vocab=len(reference_processor.tokenizer) - 1)


def test_voco_llama_keeps_voco_id_and_reads_the_saved_tower(tmp_path, tower_dir):
    tokenizer = byte_tokenizer(extra_special_tokens=("<voco>", "<image>"))  # the released order: <voco> first
    voco, image = tokenizer.convert_tokens_to_ids(["<voco>", "<image>"])
    config = VoCoLlamaConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(vocab_size=len(tokenizer)),
        image_token_id=image,
        voco_token_id=voco,
        num_voco_tokens=2,
    )
    torch.manual_seed(0)
    reference = VoCoLlamaForConditionalGeneration(config).eval()
    reference_processor = VoCoLlamaProcessor.from_config(config, tokenizer)
    torch.manual_seed(1)  # a tower unlike tower_dir's, which is read for its config only
    for parameter in reference.model.vision_tower.parameters():
        parameter.data.normal_(std=0.1)
    checkpoint = write_original(
        tmp_path / "voco",
        original_state_dict(reference, "voco_llama", drop_rows=1, with_tower=True),
        llava_config(reference, mm_projector_type="mlp2x_gelu", tokenizer_padding_side="left"),
        byte_tokenizer(extra_special_tokens=("<voco>",)),
    )
    args = ["voco_llama", "--checkpoint", str(checkpoint), "--vision-tower", str(tower_dir)]
    assert convert_cli([*args, "--output", str(tmp_path / "out")]) == 0
    model, processor = assert_same_logits(tmp_path / "out", reference, reference_processor, vocab=voco + 1)
    assert (model.config.voco_token_id, model.config.image_token_id, model.config.num_voco_tokens) == (voco, image, 2)
    # The released code has no video: <video> comes after <image>, a new row that images never read.
    assert model.config.video_token_id == image + 1 == processor.tokenizer.convert_tokens_to_ids("<video>")
    assert model.get_input_embeddings().weight.shape[0] == image + 2


def test_missing_scale_factor_without_a_name_hint_is_demanded(tmp_path, tower_dir, capsys):
    reference, _ = build_tiny("tokenpacker")
    checkpoint = write_original(
        tmp_path / "my-packer",
        original_state_dict(reference, "tokenpacker", drop_rows=1),
        llava_config(reference),
        byte_tokenizer(extra_special_tokens=()),
    )
    args = ["tokenpacker", "--checkpoint", str(checkpoint), "--vision-tower", str(tower_dir), *HEAD_DIM]
    assert convert_cli([*args, "--output", str(tmp_path / "out")]) == 1
    assert "--scale-factor" in capsys.readouterr().out and not (tmp_path / "out").exists()
    assert convert_cli([*args, "--output", str(tmp_path / "out"), "--scale-factor", "2"]) == 0
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "out").config.patch_num is None


def test_unknown_and_missing_keys_are_listed(tmp_path, tower_dir, capsys):
    reference, _ = build_tiny("tokenpacker")
    weights = original_state_dict(reference, "tokenpacker", drop_rows=1)
    weights["model.mm_projector.extra.weight"] = torch.zeros(1)
    del weights["model.norm.weight"]
    config = llava_config(reference, scale_factor=2)
    checkpoint = write_original(tmp_path / "bad", weights, config, byte_tokenizer(extra_special_tokens=()))
    args = ["tokenpacker", "--checkpoint", str(checkpoint), "--vision-tower", str(tower_dir), *HEAD_DIM]
    assert convert_cli([*args, "--output", str(tmp_path / "out")]) == 1
    assert "model.mm_projector.extra.weight" in capsys.readouterr().out
    del weights["model.mm_projector.extra.weight"]
    checkpoint = write_original(tmp_path / "short", weights, config, byte_tokenizer(extra_special_tokens=()))
    args[2] = str(checkpoint)
    assert convert_cli([*args, "--output", str(tmp_path / "out")]) == 1
    assert "missing ['model.language_model.norm.weight']" in capsys.readouterr().out


def test_output_is_never_overwritten_without_the_flag(tmp_path, tower_dir, capsys):
    reference, _ = build_tiny("tokenpacker")
    checkpoint = write_original(
        tmp_path / "TokenPacker-7b-16token",
        original_state_dict(reference, "tokenpacker", drop_rows=1),
        llava_config(reference),
        byte_tokenizer(extra_special_tokens=()),
    )
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    args = [
        "tokenpacker",
        "--checkpoint",
        str(checkpoint),
        "--vision-tower",
        str(tower_dir),
        *HEAD_DIM,
        "--output",
        str(output),
    ]
    assert convert_cli(args) == 1
    assert "--overwrite" in capsys.readouterr().out and (output / "keep.txt").read_text() == "mine"
    assert convert_cli([*args, "--overwrite"]) == 0
    assert not (output / "keep.txt").exists() and (output / "config.json").exists()


def test_vision_tower_is_demanded_when_the_checkpoint_has_none(tmp_path, capsys):
    reference, _ = build_tiny("tokenpacker")
    checkpoint = write_original(
        tmp_path / "TokenPacker-7b-16token",
        original_state_dict(reference, "tokenpacker", drop_rows=1),
        llava_config(reference, mm_hidden_size=1024),
        byte_tokenizer(extra_special_tokens=()),
    )
    assert convert_cli(["tokenpacker", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")]) == 1
    assert "--vision-tower" in capsys.readouterr().out


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    """A tiny llava-hf model (padded vocabulary, as the real ones) with its tokenizer."""
    tokenizer = byte_tokenizer()
    config = LlavaConfig(
        vision_config=tiny_vision_config().to_dict(),
        text_config=tiny_text_config(vocab_size=len(tokenizer) + 3).to_dict(),
    )
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("llava")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_llava_hf_start_reuses_tower_and_llm(llava_dir, model_type, tmp_path):
    folder, llava = llava_dir
    config = [f"--config={k}={v}" for k, v in MODEL_TYPES[model_type].tiny_config_kwargs.items()]
    args = ["llava-hf", "--llava", str(folder), "--model-type", model_type, "--output", str(tmp_path / "out"), *config]
    assert convert_cli(args) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert model.config.model_type == model_type
    for mine, theirs in [
        (model.model.vision_tower, llava.model.vision_tower),
        (model.model.language_model, llava.model.language_model),
        (model.lm_head, llava.lm_head),
    ]:
        theirs_state = theirs.state_dict()
        for key, value in mine.state_dict().items():
            if key.endswith("embed_tokens.weight") or key == "weight":  # <voco> may add a row at the end
                value = value[: theirs_state[key].shape[0]]
            torch.testing.assert_close(value, theirs_state[key], atol=0, rtol=0)
    text = processor.tokenizer("USER: hello ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            model(**text).logits[..., : llava.config.text_config.vocab_size], llava(**text).logits, atol=1e-5, rtol=0
        )
        out = model.generate(**processor(images=IMAGE, text=PROMPT, return_tensors="pt"), max_new_tokens=2)
    assert out.shape[1] > 0


def test_llava_hf_visionzip_keeps_the_llava_projector(llava_dir, tmp_path):
    """VisionZip's compressor is LLaVA's projector: the converted model runs with llava-hf's own weights."""
    folder, llava = llava_dir
    args = ["llava-hf", "--llava", str(folder), "--model-type", "visionzip", "--output", str(tmp_path / "out")]
    assert convert_cli([*args, "--config", "dominant_tokens=12", "--config", "contextual_tokens=4"]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    projector = llava.model.multi_modal_projector
    for ours, theirs in [
        (model.model.compressor.fc1, projector.linear_1),
        (model.model.compressor.fc2, projector.linear_2),
    ]:
        for name, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[name], value, atol=0, rtol=0)
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    inputs = processor(images=IMAGE, text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2


def test_llava_hf_rejects_unknown_model_type(llava_dir, tmp_path, capsys):
    folder, _ = llava_dir
    args = ["llava-hf", "--llava", str(folder), "--model-type", "nope", "--output", str(tmp_path / "out")]
    assert convert_cli(args) == 1
    assert "nope" in capsys.readouterr().out


def test_scripts_are_thin_wrappers_of_the_package():
    from conversion_scripts.convert_quecc_original_to_hf import convert_state_dict as script_quecc
    from visual_token_compression.tools.conversion.quecc import convert_state_dict

    assert script_quecc is convert_state_dict
