"""VoCo-LLaMA video, the model side: the attention rule, compact positions, the unit-by-unit prefill and the chunked
cache builder, against the single masked pass (docs/voco_llama.md#video; the equalities E1-E6 of the spec).

The model is the spec's fixture-like tiny one (2 layers, 64 wide, 4 heads, k = 2 VoCo tokens, 4 patches per frame)
with every weight drawn from N(0, 0.2^2), large enough that a wrong mask or position moves the logits by far more
than float rounding. Inputs are written token by token here, so these tests do not depend on the processor.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import LlamaConfig

from visual_token_compression import VoCoLlamaConfig, VoCoLlamaForConditionalGeneration
from visual_token_compression.compat import CACHE_NAME
from visual_token_compression.modeling.voco_cache import VoCoCache
from visual_token_compression.modeling.voco_rule import voco_attention_mask, voco_layout
from visual_token_compression.tools.tiny import byte_tokenizer, tiny_vision_config

K = 2  # VoCo tokens per image or frame
TOKENIZER = byte_tokenizer(("<image>", "<voco>", "<video>"))
IMAGE, VOCO, VIDEO = (TOKENIZER.convert_tokens_to_ids(token) for token in ("<image>", "<voco>", "<video>"))
BOS = TOKENIZER.bos_token_id
NEWLINE = TOKENIZER("\n", add_special_tokens=False).input_ids
# Float rounding of a 2-layer, 64-wide fp32 model: single-pass and unit-by-unit logits agree to ~5e-7 (measured);
# 1e-5 is the spec's bound, 20x that.
ATOL = 1e-5


def text(words: str) -> list[int]:
    return TOKENIZER(words, add_special_tokens=False).input_ids


def build_model(attn_implementation: str = "sdpa") -> VoCoLlamaForConditionalGeneration:
    text_config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=len(TOKENIZER),
        max_position_embeddings=2048,
    )
    config = VoCoLlamaConfig(
        vision_config=tiny_vision_config(image_size=8, patch_size=4),  # 2 x 2 = 4 patches per frame
        text_config=text_config,
        image_token_id=IMAGE,
        voco_token_id=VOCO,
        video_token_id=VIDEO,
        num_voco_tokens=K,
    )
    torch.manual_seed(0)
    model = VoCoLlamaForConditionalGeneration._from_config(config, attn_implementation=attn_implementation).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request):
    return build_model(request.param)


PATCHES = 4


def block(placeholder: int) -> list[int]:
    """One image or frame: its placeholders, the newline, its VoCo tokens (the processor's layout)."""
    return [placeholder] * PATCHES + NEWLINE + [VOCO] * K


def video(frames: int) -> list[int]:
    return block(VIDEO) * frames


QUESTION = text(" which way does it move?")


def batch(rows: list[list[int]], padding_side: str = "left") -> dict:
    length = max(map(len, rows))
    pad = TOKENIZER.pad_token_id
    ids, mask = [], []
    for row in rows:
        fill = length - len(row)
        ids.append([pad] * fill + row if padding_side == "left" else row + [pad] * fill)
        mask.append([0] * fill + [1] * len(row) if padding_side == "left" else [1] * len(row) + [0] * fill)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def pixels(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def mixed_batch(padding_side: str = "left") -> dict:
    """The spec's batch: a 3-frame video and a question; an image, text, a 2-frame video and a question; text only."""
    rows = [
        [BOS, *video(3), *QUESTION],
        [BOS, *block(IMAGE), *text(" and then"), *video(2), *QUESTION],
        [BOS, *text(" a question without any picture")],
    ]
    return {
        **batch(rows, padding_side),
        "pixel_values": pixels(1, 0),
        "pixel_values_videos": pixels(5, 1),
        "video_num_frames": torch.tensor([3, 2]),
    }


def single_pass(model, **inputs):
    """The masked single pass: asking for the language model's hidden states makes the model run one pass."""
    with torch.no_grad():
        return model(**inputs, use_cache=True, output_hidden_states=True)


def unit_by_unit(model, **inputs):
    with torch.no_grad():
        return model(**inputs, use_cache=True)


# --- the rule --------------------------------------------------------------------------------------------------------


def brute_force_allowed(row: list[int], real: list[bool]) -> list[list[bool]]:
    """The rule of docs/voco_llama.md, transcribed token by token: (a) causal and not padding, (b) no unit ends
    between key and query (VoCo keys excepted), (c) not two different frames of one video, (d) itself."""
    length = len(row)
    placeholders = {IMAGE, VIDEO}
    blocks = []  # (kind, start, end) with end the block's last VoCo token
    i = 0
    while i < length:
        if row[i] in placeholders and (i == 0 or row[i - 1] != row[i]):
            kind, start = row[i], i
            while row[i] != VOCO:
                i += 1
            while i + 1 < length and row[i + 1] == VOCO:
                i += 1
            blocks.append((kind, start, i))
        i += 1
    frame_of, video_of, unit_ends, video_id = [0] * length, [0] * length, [], 0
    for index, (kind, start, end) in enumerate(blocks):
        if kind == VIDEO:
            continues = index > 0 and blocks[index - 1][0] == VIDEO and blocks[index - 1][2] + 1 == start
            video_id += 0 if continues else 1
            for j in range(start, end + 1):
                frame_of[j], video_of[j] = index + 1, video_id
        following = blocks[index + 1] if index + 1 < len(blocks) else None
        if not (kind == VIDEO and following and following[0] == VIDEO and following[1] == end + 1):
            unit_ends.append(end)
    allowed = [[False] * length for _ in range(length)]
    for q in range(length):
        for k in range(length):
            seal = length if row[k] == VOCO else min([end for end in unit_ends if end >= k], default=length)
            other_frame = video_of[q] and video_of[q] == video_of[k] and frame_of[q] != frame_of[k]
            allowed[q][k] = (k <= q and real[k] and q <= seal and not other_frame) or k == q
    return allowed


def random_row(rng: random.Random) -> list[int]:
    row = [BOS]
    for _ in range(rng.randint(0, 4)):
        kind = rng.choice(["text", "image", "video"])
        if kind == "text":
            row += text(" " + "x" * rng.randint(1, 3))
        elif kind == "image":
            row += block(IMAGE)
        else:
            row += video(rng.randint(1, 3))
    return row + text(" end")


def test_the_mask_is_the_rule_transcribed(seed=0):
    """E6: on random layouts (images, videos, text-only rows, padding on either side) the 4-D mask allows exactly
    what a token-by-token transcription of the rule allows."""
    rng = random.Random(seed)
    for trial in range(20):
        rows = [random_row(rng) for _ in range(3)]
        inputs = batch(rows, padding_side="left" if trial % 2 else "right")
        ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
        layout = voco_layout(ids == VOCO, ids == IMAGE, ids == VIDEO, K)
        mask, _ = voco_attention_mask(ids == VOCO, real, 0, torch.float32, layout)
        allowed = mask[:, 0] == 0
        for row in range(len(rows)):
            expected = torch.tensor(brute_force_allowed(ids[row].tolist(), real[row].tolist()))
            assert torch.equal(allowed[row], expected), (trial, row, ids[row].tolist())


def test_compact_positions():
    """Frame t of a video starts (t - 1) * k after the first; the text after the video continues from the last
    frame's end; a video of one frame is an image."""
    frame = len(block(VIDEO))
    ids = torch.tensor([[BOS, *video(3), *QUESTION]])
    layout = voco_layout(ids == VOCO, ids == IMAGE, ids == VIDEO, K)
    positions = torch.arange(ids.shape[1]) - layout.position_shift[0]
    for t in range(3):
        start = 1 + t * frame
        assert positions[start : start + frame].tolist() == list(range(1 + t * K, 1 + t * K + frame))
    assert positions[1 + 3 * frame] == 1 + frame + 2 * K
    assert layout.rope_deltas.tolist() == [-2 * (frame - K)]
    single = torch.tensor([[BOS, *video(1), *QUESTION]])
    assert not voco_layout(single == VOCO, single == IMAGE, single == VIDEO, K).position_shift.any()


# --- equalities --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_unit_by_unit_prefill_equals_the_single_pass(model, padding_side):
    """E1: logits at every real position, and the compressed cache (columns, padding, rope deltas) per layer."""
    inputs = mixed_batch(padding_side)
    single, split = single_pass(model, **inputs), unit_by_unit(model, **inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(split.logits[real], single.logits[real], atol=ATOL, rtol=0)
    one, other = single[CACHE_NAME], split[CACHE_NAME]
    assert isinstance(one, VoCoCache) and isinstance(other, VoCoCache)
    assert torch.equal(one.key_mask, other.key_mask) and torch.equal(one.rope_deltas, other.rope_deltas)
    kept = one.key_mask[:, None, :, None]
    for layer_one, layer_other in zip(one.layers, other.layers, strict=True):
        torch.testing.assert_close(layer_other.keys * kept, layer_one.keys * kept, atol=ATOL, rtol=0)
        torch.testing.assert_close(layer_other.values * kept, layer_one.values * kept, atol=ATOL, rtol=0)
    frame = len(block(VIDEO))
    assert one.rope_deltas.tolist() == [-2 * (frame - K), -(frame - K), 0]


def test_the_cache_keeps_k_columns_per_frame_and_the_text():
    model = build_model()
    inputs = mixed_batch()
    cache = unit_by_unit(model, **inputs)[CACHE_NAME]
    question = len(QUESTION)
    expected = [3 * K + question, K + 2 * K + question, len(text(" a question without any picture")) + 1]
    assert cache.key_mask.sum(-1).tolist() == expected


@pytest.mark.parametrize("frames_per_chunk", [1, 2, 8])
def test_compress_videos_in_chunks_equals_the_single_pass(model, frames_per_chunk):
    """E1's cached path: the prefix through the last VoCo run compressed chunk by chunk, then the question on a copy
    of that cache, gives the single pass's logits of the question."""
    inputs = mixed_batch()
    rows = [[BOS, *video(3)], [BOS, *block(IMAGE), *text(" and then"), *video(2)]]
    prefix = batch(rows)
    cache = model.compress_videos(
        prefix["input_ids"],
        inputs["pixel_values_videos"],
        inputs["video_num_frames"],
        attention_mask=prefix["attention_mask"],
        frames_per_chunk=frames_per_chunk,
        pixel_values=inputs["pixel_values"],
    )
    assert model.model.frames_per_chunk == 8  # restored
    question_ids = torch.tensor([QUESTION, QUESTION])
    full_mask = torch.cat([prefix["attention_mask"], torch.ones_like(question_ids)], dim=1)
    with torch.no_grad():
        cached = model(input_ids=question_ids, attention_mask=full_mask, **{CACHE_NAME: copy.deepcopy(cache)})
    first_two = {name: inputs[name][:2] for name in ("input_ids", "attention_mask")}
    reference = single_pass(model, **{**inputs, **first_two})
    torch.testing.assert_close(cached.logits, reference.logits[:2, -len(QUESTION) :], atol=ATOL, rtol=0)


def test_greedy_generate_equals_from_the_compressed_cache_and_without_cache():
    """E2: generate (unit-by-unit prefill), generate from compress_videos' cache, and generate without a cache
    (the masked single pass at every step) give the same tokens."""
    model = build_model()
    inputs = mixed_batch()
    settings = {"max_new_tokens": 12, "do_sample": False}
    generated = model.generate(**inputs, **settings)
    assert torch.equal(model.generate(**inputs, **settings, use_cache=False), generated)
    row = {"input_ids": inputs["input_ids"][:1], "attention_mask": inputs["attention_mask"][:1]}
    length = 1 + len(video(3))
    start = row["input_ids"].shape[1] - len(QUESTION) - length
    cache = model.compress_videos(
        row["input_ids"][:, start : start + length], inputs["pixel_values_videos"][:3], torch.tensor([3])
    )
    from_cache = model.generate(
        input_ids=row["input_ids"][:, start:], **{CACHE_NAME: copy.deepcopy(cache)}, **settings
    )
    assert torch.equal(from_cache[:, -12:], generated[:1, -12:])


def test_one_frame_video_is_the_image():
    """E3: the same pixels as a 1-frame video or as an image, with the same text around: the same logits and cache."""
    model = build_model()
    frame = pixels(1, 3)
    as_video = {"input_ids": torch.tensor([[BOS, *video(1), *QUESTION]]), "pixel_values_videos": frame}
    as_image = {"input_ids": torch.tensor([[BOS, *block(IMAGE), *QUESTION]]), "pixel_values": frame}
    video_out = unit_by_unit(model, **as_video, video_num_frames=torch.tensor([1]))
    image_out = unit_by_unit(model, **as_image)
    torch.testing.assert_close(video_out.logits, image_out.logits, atol=1e-6, rtol=0)
    for video_layer, image_layer in zip(video_out[CACHE_NAME].layers, image_out[CACHE_NAME].layers, strict=True):
        torch.testing.assert_close(video_layer.keys, image_layer.keys, atol=1e-6, rtol=0)


def restart_positions(ids: torch.Tensor) -> torch.Tensor:
    """The order-blind control, written out: every frame at the first frame's positions, the text as compact
    positions put it."""
    layout = voco_layout(ids == VOCO, ids == IMAGE, ids == VIDEO, K)
    compact = torch.arange(ids.shape[1]) - layout.position_shift
    frame = len(block(VIDEO))
    restarted = compact.clone()
    for t in range(1, 3):
        start = 1 + t * frame
        restarted[:, start : start + frame] = compact[:, 1 : 1 + frame]
    return restarted


def test_the_restart_control_is_the_positions_written_out():
    """`video_positions="restart"` (the demo's order-blind control) gives exactly those positions."""
    ids = torch.tensor([[BOS, *video(3), *QUESTION]])
    layout = voco_layout(ids == VOCO, ids == IMAGE, ids == VIDEO, K, restart_frames=True)
    assert torch.equal(torch.arange(ids.shape[1]) - layout.position_shift, restart_positions(ids))


def test_compact_positions_see_the_frame_order_and_restarted_ones_do_not():
    """E4: reversing the frames changes the question's logits under compact positions; under restarted positions
    (all frames at the same positions) attention over the frames' VoCo keys is order-blind."""
    model = build_model()
    ids = torch.tensor([[BOS, *video(3), *QUESTION]])
    frames = pixels(3, 4)
    num_frames = torch.tensor([3])
    question = slice(-len(QUESTION), None)

    def logits(frames, position_ids=None):
        extra = {} if position_ids is None else {"position_ids": position_ids}
        with torch.no_grad():
            output = model(input_ids=ids, pixel_values_videos=frames, video_num_frames=num_frames, **extra)
        return output.logits[0, question]

    compact, compact_reversed = logits(frames), logits(frames.flip(0))
    restarted = logits(frames, restart_positions(ids))
    restarted_reversed = logits(frames.flip(0), restart_positions(ids))
    # Order reaches the question only through the rotary phases of the frames' VoCo keys, k positions apart: in
    # this model that moves the logits by ~5e-3 (measured), 500x float rounding (ATOL) and 100x the floor here.
    order_effect = 100 * ATOL
    assert (compact - compact_reversed).abs().max() > order_effect
    assert (compact - restarted).abs().max() > order_effect
    torch.testing.assert_close(restarted, restarted_reversed, atol=ATOL, rtol=0)


# --- generation ----------------------------------------------------------------------------------------------------


def test_beams_expand_each_samples_frames():
    """Frames are rows of pixel_values_videos, videos rows of video_num_frames: beams and num_return_sequences must
    repeat each sample's frames and videos in order (the batch equals its rows alone)."""
    model = build_model()
    inputs = mixed_batch()
    settings = {"max_new_tokens": 5, "do_sample": False, "num_beams": 2, "num_return_sequences": 2}
    batched = model.generate(**inputs, **settings)
    rows = [
        {"pixel_values_videos": inputs["pixel_values_videos"][:3], "video_num_frames": torch.tensor([3])},
        {
            "pixel_values": inputs["pixel_values"],
            "pixel_values_videos": inputs["pixel_values_videos"][3:],
            "video_num_frames": torch.tensor([2]),
        },
        {},
    ]
    for row, extra in enumerate(rows):
        real = inputs["attention_mask"][row].bool()
        alone = model.generate(input_ids=inputs["input_ids"][row, real][None], **extra, **settings)
        assert batched[2 * row : 2 * row + 2, -5:].tolist() == alone[:, -5:].tolist(), row


def test_video_features_and_encoded_videos_are_accepted():
    """`get_video_features` gives one (frames * patches, hidden) entry per video; its output passed back as
    `mm_encoder_outputs={"video": ...}` gives the same logits as the pixels."""
    model = build_model()
    inputs = mixed_batch()
    with torch.no_grad():
        encoded = model.get_video_features(inputs["pixel_values_videos"], inputs["video_num_frames"])
        reference = model(**inputs)
        rest = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "video_num_frames")}
        from_encoded = model(**rest, mm_encoder_outputs={"video": encoded})
    assert [tuple(entry.shape) for entry in encoded.pooler_output] == [(3 * PATCHES, 64), (2 * PATCHES, 64)]
    assert encoded.video_num_frames.tolist() == [3, 2]
    torch.testing.assert_close(from_encoded.logits, reference.logits, atol=0, rtol=0)


# --- errors --------------------------------------------------------------------------------------------------------


def test_errors_name_the_problem():
    model = build_model()
    inputs = mixed_batch()
    with pytest.raises(ValueError, match=r"video_num_frames \[3, 3\] must .* sum to the 5 frames"):
        model(**{**inputs, "video_num_frames": torch.tensor([3, 3])})
    with pytest.raises(ValueError, match=r"videos have \[3, 2\] frames, but video_num_frames says \[2, 3\]"):
        model(**{**inputs, "video_num_frames": torch.tensor([2, 3])})
    with pytest.raises(ValueError, match="video placeholder tokens but no pixel_values_videos"):
        model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="video_num_frames"):
        model(input_ids=inputs["input_ids"], pixel_values_videos=inputs["pixel_values_videos"])
    no_voco = torch.tensor([[BOS, *[VIDEO] * PATCHES, *NEWLINE, *QUESTION]])
    with pytest.raises(ValueError, match="0 <voco> tokens, but needs 2 per image or frame"):
        model(input_ids=no_voco, pixel_values_videos=pixels(1, 0), video_num_frames=torch.tensor([1]))


def test_a_config_without_video_token_id_refuses_videos():
    model = build_model()
    config = model.config.to_dict()
    config["video_token_id"] = None
    no_video = VoCoLlamaForConditionalGeneration(VoCoLlamaConfig.from_dict(config)).eval()
    inputs = mixed_batch()
    with pytest.raises(ValueError, match=r"config.video_token_id is not set"):
        no_video(**inputs)
    with pytest.raises(ValueError, match="must be its own token"):
        VoCoLlamaConfig.from_dict({**config, "video_token_id": VOCO})
    with pytest.raises(ValueError, match="video_positions must be 'compact' or 'restart'"):
        VoCoLlamaConfig.from_dict({**config, "video_positions": "natural"})
