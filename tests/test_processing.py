"""The shared processor: placeholder expansion, chat template, image modes and errors (on TokenPacker)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.golden import COCO_DIR
from visual_token_compression import TokenPackerProcessor
from visual_token_compression.processing.chat_templates import VICUNA_V1_SYSTEM
from visual_token_compression.tools.tiny import build_tiny


@pytest.fixture(scope="module")
def processor():
    return build_tiny("tokenpacker")[1]


def test_image_token_expands_to_the_compressed_count(processor):
    # tiny tower: 32 px / 4 px patches = 8x8 grid, scale_factor 2 -> 16 tokens, as (grid / s)^2.
    assert processor.image_seq_length == (8 // 2) ** 2
    inputs = processor(images=[Image.new("RGB", (20, 20))] * 2, text="<image> and <image> compared")
    assert inputs["input_ids"][0].count(processor.image_token_id) == 2 * processor.image_seq_length
    counts = processor._get_num_multimodal_tokens(image_sizes=[(20, 20), (300, 10)])
    assert counts.num_image_tokens == [processor.image_seq_length] * 2
    assert counts.num_image_patches == [1, 1]


@pytest.mark.parametrize("scale_factor", [2, 4])
def test_count_follows_the_config(scale_factor):
    model, processor = build_tiny("tokenpacker", scale_factor=scale_factor)
    assert processor.image_seq_length == model.config.image_seq_length == (8 // scale_factor) ** 2


def test_vicuna_v1_chat_template(processor):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": "And its colour?"},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        f"<s>{VICUNA_V1_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: And its colour? ASSISTANT:"
    )
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(system, tokenize=False) == "<s>Be brief. USER: Hi "


def test_processor_round_trip_keeps_template_and_count(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    reloaded = TokenPackerProcessor.from_pretrained(tmp_path)
    assert reloaded.chat_template == processor.chat_template
    assert reloaded.image_seq_length == processor.image_seq_length
    assert reloaded.image_token_id == processor.image_token_id


def test_placeholder_and_image_counts_must_agree(processor):
    with pytest.raises(ValueError, match="holds 2 '<image>' tokens but 1 images"):
        processor(images=Image.new("RGB", (8, 8)), text="<image><image>")
    with pytest.raises(ValueError, match="holds 0 '<image>' tokens but 1 images"):
        processor(images=Image.new("RGB", (8, 8)), text="no placeholder")


def test_truncation_through_image_tokens_is_an_error(processor):
    with pytest.raises(ValueError, match=r"truncation kept \d+ of its 16 '<image>' tokens"):
        processor(images=Image.new("RGB", (8, 8)), text="some words <image>", truncation=True, max_length=12)


def _sixteen_bit() -> Image.Image:
    """A real 16-bit grayscale PNG, read back as Pillow opens such files."""
    ramp = np.linspace(0, 65535, 32 * 16).reshape(16, 32).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    image = Image.open(io.BytesIO(buffer.getvalue()))
    assert image.mode.startswith("I"), image.mode
    return image


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (30, 20), 128),
        Image.new("RGBA", (30, 20), (255, 0, 0, 0)),
        Image.new("P", (30, 20), 3),
        Image.new("1", (30, 20), 1),
        Image.new("CMYK", (30, 20), (0, 255, 0, 0)),
        _sixteen_bit(),
    ],
    ids=lambda image: image.mode,
)
def test_every_image_mode_becomes_rgb_pixels(processor, image):
    inputs = processor(images=image, text="<image>", return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert torch.isfinite(inputs["pixel_values"]).all()


def test_sixteen_bit_images_keep_their_range(processor):
    from visual_token_compression.processing.images import load_image

    pixels = np.asarray(load_image(_sixteen_bit()))
    assert pixels.min() == 0 and pixels.max() == 255, "16-bit values must be scaled, not clipped"


def test_a_file_that_is_not_an_image_is_named(processor, tmp_path):
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg"):
        processor(images=str(bogus), text="<image>")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        processor(images=str(tmp_path / "missing.png"), text="<image>")


def test_real_coco_images(processor):
    paths = sorted((COCO_DIR / "images").glob("*.jpg"))
    captions = json.loads((COCO_DIR / "captions.json").read_text())
    assert len(paths) >= 50 and captions
    inputs = processor(images=[str(p) for p in paths], text=["<image> a photo"] * len(paths), return_tensors="pt")
    assert inputs["pixel_values"].shape == (len(paths), 3, 32, 32)
    per_sample = (inputs["input_ids"] == processor.image_token_id).sum(1)
    assert per_sample.tolist() == [processor.image_seq_length] * len(paths)
    # pixel statistics differ between real photos: nothing collapsed to a constant image
    assert inputs["pixel_values"].flatten(1).std(1).min() > 0.05
