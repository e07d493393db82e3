"""TokenPacker-HD behaviour: switching it on, tiling, the text layout, mixed-grid batches, extreme inputs, saving."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.golden import REPO_ROOT
from visual_token_compression import TokenPackerConfig, TokenPackerImageProcessor, TokenPackerProcessor
from visual_token_compression.processing.tokenpacker_hd import resize_bilinear
from visual_token_compression.tools.tiny import build_tiny, byte_tokenizer, tiny_text_config, tiny_vision_config

TILE = 32  # tiny_vision_config's image_size
Q = 16  # (8 patches / scale 2)^2


@pytest.fixture(scope="module")
def tiny_hd():
    return build_tiny("tokenpacker", patch_num=9)


def tiny_config(**kwargs) -> TokenPackerConfig:
    return TokenPackerConfig(
        vision_config=tiny_vision_config(), text_config=tiny_text_config(), compressor_head_dim=8, **kwargs
    )


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def run_fresh(script: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("patch_num", [9, 16, 25])
def test_config_patch_num_round_trips(patch_num):
    assert TokenPackerConfig.from_dict(tiny_config(patch_num=patch_num).to_dict()).patch_num == patch_num
    assert tiny_config().patch_num is None


@pytest.mark.parametrize("patch_num", [0, 4, 10, "9"])
def test_bad_patch_num_is_a_clear_error(patch_num):
    with pytest.raises(ValueError, match="patch_num"):
        tiny_config(patch_num=patch_num)
    with pytest.raises(ValueError, match="patch_num"):
        TokenPackerImageProcessor(patch_num=patch_num)


def test_plain_tokenpacker_is_unchanged():
    _, processor = build_tiny("tokenpacker")
    assert not processor.is_hd
    encoded = processor(images=random_image(50, 70), text="<image>\nhi", return_tensors="pt")
    assert encoded["pixel_values"].shape == (1, 3, TILE, TILE)
    assert int((encoded["input_ids"] == processor.image_token_id).sum()) == Q


@pytest.mark.parametrize("in_size,out_size", [((20, 30), (56, 84)), ((75, 30), (84, 34)), ((333, 777), (1234, 99))])
def test_resize_matches_torch_bilinear(in_size, out_size):
    image = torch.randn(3, *in_size, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(image[None], size=out_size, mode="bilinear")[0]
    torch.testing.assert_close(resize_bilinear(image, out_size), expected, atol=1e-6, rtol=0)


def test_tiles_follow_the_tower_size_row_major_then_global_view(tiny_hd):
    _, processor = tiny_hd
    # 2x3 blocks of one colour each, exactly the canvas size: no resize, so each tile is one flat colour.
    colours = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    pixels = np.repeat(np.repeat(colours, TILE, axis=0), TILE, axis=1)[..., None].repeat(3, axis=2)
    image_processor = processor.image_processor
    assert image_processor.tile_size == TILE and image_processor.grid(2 * TILE, 3 * TILE) == (2, 3)
    views = image_processor(pixels, return_tensors="pt")["pixel_values"]
    assert views.shape == (7, 3, TILE, TILE)
    for index, colour in enumerate(colours.flatten()):
        expected = image_processor._normalize(np.full((3, 1, 1), colour, dtype=np.uint8))
        torch.testing.assert_close(views[index], expected.expand(3, TILE, TILE))
    canvas = torch.cat([torch.cat(list(views[row * 3 : row * 3 + 3]), dim=2) for row in range(2)], dim=1)
    global_view = F.interpolate(canvas[None], size=(21, 32), mode="bilinear")[0]  # 2:3 image fit in 32x32
    torch.testing.assert_close(views[6, :, :21], global_view, atol=1e-6, rtol=0)
    assert (views[6, :, 21:] == 0).all()


def test_global_view_is_made_from_the_padded_canvas():
    """As released: the padding band of the canvas is squashed into the global view (documented deviation)."""
    image_processor = TokenPackerImageProcessor(patch_num=9, tile_size=TILE)
    pixels = np.full((30, 100, 3), 255, dtype=np.uint8)  # white; fills 29 of the 32 canvas rows of a 1x3 grid
    assert image_processor.grid(30, 100) == (1, 3)
    views = image_processor(pixels, return_tensors="pt")["pixel_values"]
    white = image_processor._normalize(np.full((3, 1, 1), 255, dtype=np.uint8))[0, 0, 0]
    global_column = views[-1, 0, :, 0]  # the image fits 32 wide as 10 rows
    assert torch.isclose(global_column[0], white)
    assert global_column[9] == 0  # the canvas's padding band, squashed into the last row
    assert (global_column[10:] == 0).all()


def image_part(ids: list[int], processor) -> list[int]:
    start = ids.index(processor.image_token_id)
    return ids[start:]


def test_layout_text_tokens_and_counts(tiny_hd):
    _, processor = tiny_hd
    tokenizer = processor.tokenizer
    comma, newline = tokenizer.convert_tokens_to_ids(","), tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    image = random_image(2 * TILE, 3 * TILE)
    ids = processor(images=image, text="<image>", return_tensors="pt")["input_ids"][0].tolist()
    view = [processor.image_token_id] * Q
    row = view + [comma] + view + [comma] + view + [newline]
    assert image_part(ids, processor) == row + row + view + [newline]
    count = (Q + 1) * 7
    assert processor.image_token_counts([(2 * TILE, 3 * TILE)]) == [count] == [len(image_part(ids, processor))]
    data = processor._get_num_multimodal_tokens([(2 * TILE, 3 * TILE), (TILE, TILE)])
    assert data.num_image_tokens == [count, Q + 1] and data.num_image_patches == [7, 1]


def test_unk_row_separator_reproduces_vicuna_checkpoints(tiny_hd):
    _, plain = tiny_hd
    tokenizer = plain.tokenizer
    processor = TokenPackerProcessor(plain.image_processor, tokenizer, image_seq_length=Q, row_separator="<unk>")
    ids = processor(images=random_image(TILE, 2 * TILE), text="<image>")["input_ids"][0]
    view = [processor.image_token_id] * Q
    unk = tokenizer.unk_token_id
    assert image_part(ids, processor) == view + [tokenizer.convert_tokens_to_ids(",")] + view + [unk] + view + [unk]


@pytest.mark.parametrize("separator", ["\n\n", "ab", "<image>", ""])
def test_separator_must_be_one_token(tiny_hd, separator):
    _, plain = tiny_hd
    with pytest.raises(ValueError, match="row_separator"):
        TokenPackerProcessor(plain.image_processor, plain.tokenizer, image_seq_length=Q, row_separator=separator)


def test_mixed_grid_batch_matches_one_by_one(tiny_hd):
    model, processor = tiny_hd
    images = [
        random_image(2 * TILE, 3 * TILE, seed=1),
        random_image(TILE, TILE, seed=2),
        random_image(20, 300, seed=3),
    ]
    texts = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image>\nand <image> these? ASSISTANT:"]
    batch = processor(images=[images[:1], images[1:]], text=texts, return_tensors="pt", padding_side="left")
    assert batch["pixel_values"].shape[0] == 7 + 1 + 10
    singles = [processor(images=[images[0]], text=texts[0], return_tensors="pt")]
    singles.append(processor(images=images[1:], text=texts[1], return_tensors="pt"))
    with torch.no_grad():
        batched = model(**batch)
        for index, single in enumerate(singles):
            output = model(**single)
            torch.testing.assert_close(batched.logits[index, -1], output.logits[0, -1], atol=1e-4, rtol=1e-4)
        expected_features = torch.cat([model(**single).image_hidden_states for single in singles])
        torch.testing.assert_close(batched.image_hidden_states, expected_features, atol=1e-5, rtol=1e-5)
        generated = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, batch["input_ids"].shape[1] :]
        for index, single in enumerate(singles):
            alone = model.generate(**single, max_new_tokens=5, do_sample=False)[:, single["input_ids"].shape[1] :]
            assert generated[index].tolist() == alone[0].tolist()


def test_chat_template_path(tiny_hd):
    model, processor = tiny_hd
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=random_image(40, 90), text=prompt, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("height,width", [(1, 1), (2, 3), (1, 10000), (10000, 1)])
def test_extreme_sizes_give_valid_views(tiny_hd, height, width):
    model, processor = tiny_hd
    image = Image.new("RGB", (width, height), (200, 30, 90))
    inputs = processor(images=image, text="<image>\nhi", return_tensors="pt")
    views = processor.image_processor.num_views(height, width)
    assert inputs["pixel_values"].shape == (views, 3, TILE, TILE) and torch.isfinite(inputs["pixel_values"]).all()
    with torch.no_grad():
        assert model(**inputs).image_hidden_states.shape == (views, Q, model.config.text_config.hidden_size)


@pytest.mark.parametrize(
    "image,error",
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
        (Image.new("RGB", (0, 5)), "empty"),
        ("/nonexistent.png", "not found"),
    ],
)
def test_bad_images_are_clear_errors(tiny_hd, image, error):
    _, processor = tiny_hd
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        processor(images=image, text="<image>")


def test_8000px_image_memory_stays_bounded():
    """Only output-sized float buffers: the full-resolution float image alone would be 8000*8000*3*4 B = 768 MB."""
    stdout = run_fresh("""
        import resource
        from PIL import Image
        from visual_token_compression import TokenPackerImageProcessor
        processor = TokenPackerImageProcessor(patch_num=25, tile_size=336)
        processor.slice_image(Image.new("RGB", (700, 500)))
        image = Image.new("RGB", (8000, 8000), (10, 200, 30))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        views = processor.slice_image(image)
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(tuple(views.shape), grown_mb)
    """)
    shape, grown_mb = stdout.strip().rsplit(" ", 1)
    assert shape == "(26, 3, 336, 336)"
    assert float(grown_mb) < 600, f"preprocessing an 8000x8000 image grew the process by {grown_mb} MB"


def test_save_and_load_in_a_fresh_process(tiny_hd, tmp_path):
    model, processor = tiny_hd
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    random_image(50, 140, seed=4).save(tmp_path / "image.png")
    text = "USER: <image>\nWhat? ASSISTANT:"
    stdout = run_fresh(f"""
        import json, torch
        import visual_token_compression
        from transformers import AutoModelForImageTextToText, AutoProcessor
        processor = AutoProcessor.from_pretrained({str(tmp_path)!r})
        model = AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r}).eval()
        inputs = processor(images={str(tmp_path / "image.png")!r}, text={text!r}, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        torch.save(dict(inputs, logits=logits), {str(tmp_path / "out.pt")!r})
        print(json.dumps([type(processor).__name__, type(processor.image_processor).__name__,
                          model.config.patch_num, processor.row_separator]))
    """)
    assert json.loads(stdout) == ["TokenPackerProcessor", "TokenPackerImageProcessor", 9, "\n"]
    loaded = torch.load(tmp_path / "out.pt")
    inputs = processor(images=str(tmp_path / "image.png"), text=text, return_tensors="pt")
    assert loaded["input_ids"].tolist() == inputs["input_ids"].tolist()
    torch.testing.assert_close(loaded["pixel_values"], inputs["pixel_values"], atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded["logits"], model(**inputs).logits[0, -1], atol=1e-5, rtol=1e-5)


def test_hd_needs_a_view_token_count():
    with pytest.raises(ValueError, match="image_seq_length"):
        TokenPackerProcessor(TokenPackerImageProcessor(tile_size=TILE), byte_tokenizer())
