"""Analytic FLOPs of one prefill: vision tower, compressor and LLM, counted as 2 FLOPs per multiply-accumulate.

A method's compressor formula is its entry in `sweeps.COMPRESSOR_FLOPS`, called as `(config, inputs)` with the
processor's inputs of the prefill (`views_of(inputs)` views; QueCC also reads its question's tokens).

Only matrix products are counted (linear layers, convolutions, attention scores and attention-weighted values), the
convention of `torch.utils.flop_counter`; norms, activations, softmax and gathers are left out. Attention is counted
over the (query, key) pairs attended: every pair in the vision tower and the compressors, each token's earlier keys
and itself in the causal LLM. That is the work a causal prefill needs, and the part SDPA's causal kernels do: they
skip the key blocks after each query block (`tests/test_benchmarks.py` shows it), where torch's FLOP counter and the
dense kernels (eager, an explicit mask) count the whole rectangle, twice the work of a long causal prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...modeling.voco_rule import voco_layout


@dataclass(frozen=True)
class PrefillFlops:
    """FLOPs of one prefill, split by the three parts every row of the benchmark has."""

    vision: int
    compressor: int
    llm: int

    @property
    def total(self) -> int:
        return self.vision + self.compressor + self.llm


def views_of(inputs) -> int:
    """Views of the tower in a prefill's processor inputs: one row of `pixel_values` (an image view) or of
    `pixel_values_videos` (a video frame) each."""
    return sum(inputs[name].shape[0] for name in ("pixel_values", "pixel_values_videos") if name in inputs)


def linear(tokens: int, in_features: int, out_features: int) -> int:
    return 2 * tokens * in_features * out_features


def attention(queries: int, keys: int, heads: int, head_dim: int, causal: bool = False) -> int:
    """Scores (q . k) and weighted values (p . v) of one multi-head attention over every (query, key) pair, or with
    `causal` (the queries are the last of the keys) over each query's earlier keys and itself."""
    pairs = queries * keys - (queries * (queries - 1) // 2 if causal else 0)
    return 2 * 2 * pairs * heads * head_dim


def clip_vision_flops(vision_config, views: int = 1) -> int:
    """A CLIP vision tower over `views` images: patch embedding + every encoder layer (the VLMs read hidden states,
    so all layers run), CLS token included."""
    if vision_config.model_type != "clip_vision_model":
        raise ValueError(f"Analytic vision FLOPs know CLIP towers only, got {vision_config.model_type!r}.")
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    tokens = patches + 1
    width, mlp = vision_config.hidden_size, vision_config.intermediate_size
    heads = vision_config.num_attention_heads
    embedding = linear(patches, vision_config.num_channels * vision_config.patch_size**2, width)
    layer = (
        4 * linear(tokens, width, width)
        + attention(tokens, tokens, heads, width // heads)
        + linear(tokens, width, mlp)
        + linear(tokens, mlp, width)
    )
    return views * (embedding + vision_config.num_hidden_layers * layer)


def llm_flops(text_config, new_tokens: int, past_tokens: int = 0, logits_tokens: int = 1) -> int:
    """A Llama-style decoder (q/k/v/o projections, gated MLP) over `new_tokens` attending to `past_tokens` + itself,
    plus the LM head on `logits_tokens` positions (1 at prefill with `logits_to_keep=1`)."""
    width, mlp = text_config.hidden_size, text_config.intermediate_size
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or width // heads
    layer = (
        linear(new_tokens, width, heads * head_dim)
        + 2 * linear(new_tokens, width, kv_heads * head_dim)
        + linear(new_tokens, heads * head_dim, width)
        + attention(new_tokens, past_tokens + new_tokens, heads, head_dim, causal=True)
        + 3 * linear(new_tokens, width, mlp)
    )
    return text_config.num_hidden_layers * layer + linear(logits_tokens, width, text_config.vocab_size)


def mlp2x_flops(tokens: int, in_features: int, width: int) -> int:
    """LLaVA-1.5's `mlp2x_gelu` projector (also LlavaMultiModalProjector): in -> width -> width."""
    return linear(tokens, in_features, width) + linear(tokens, width, width)


def llava_projector_flops(config, views: int = 1) -> int:
    """transformers' `LlavaMultiModalProjector` on every patch of every view."""
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    return views * mlp2x_flops(patches, config.vision_config.hidden_size, config.text_config.hidden_size)


def _window_attention_flops(patches: int, queries: int, window: int, width: int, heads: int) -> int:
    """`LocalCrossAttention`: q projection on the queries, k/v on every patch, each query sees `window` keys."""
    return (
        2 * linear(queries, width, width)
        + 2 * linear(patches, width, width)
        + attention(queries, window, heads, width // heads)
    )


def tokenpacker_flops(config, inputs) -> int:
    """`TokenPackerCompressor` per view: k/v MLPs on the multi-level patches, query projection of the resized grid,
    region attention (s^2 keys per query) and the output MLP to the LLM width."""
    patches = config.vision_grid_size**2
    queries = config.compressed_grid_size**2
    vision_width = config.vision_config.hidden_size
    multi_width = vision_width * len(config.multi_level_feature_layers)
    width = config.compressor_hidden_size
    per_view = (
        2 * mlp2x_flops(patches, multi_width, width)
        + linear(queries, vision_width, width)
        + _window_attention_flops(patches, queries, config.scale_factor**2, width, config.compressor_num_heads)
        + mlp2x_flops(queries, width, config.text_config.hidden_size)
    )
    return views_of(inputs) * per_view + region_extractor_flops(config, inputs)


def region_extractor_flops(config, inputs) -> int:
    """TokenPacker-HD's region extractor (Osprey) on the prompt's region masks: each mask's mean over the patch cells
    of every pooled level, one linear layer per level, and the projection to the LLM width."""
    width, levels = config.vision_config.hidden_size, len(config.region_feature_layers)
    total = 0
    for masks in inputs.get("region_masks") or ():
        regions, (height, image_width) = masks.shape[0], masks.shape[-2:]
        cells = (height // config.vision_config.patch_size) * (image_width // config.vision_config.patch_size)
        pooling = 2 * levels * regions * cells * width
        total += (
            pooling + levels * linear(regions, width, width) + linear(regions, width, config.text_config.hidden_size)
        )
    return total


def quecc_flops(config, inputs) -> int:
    """`QueCCCompressor` per view plus the query pass: the LLM over each image's question (no LM head) for its vector.

    The query pass is counted here because it exists only for the compressor."""
    patches = config.vision_grid_size**2
    queries = config.compressed_grid_size**2
    width = config.vision_config.hidden_size
    multi_width = width * len(config.multi_level_feature_layers)
    text_width = config.text_config.hidden_size
    per_view = (
        linear(1, text_width, width)
        + mlp2x_flops(patches, width, width)
        + 2 * queries * width * config.kernel_size**2
        + 2 * mlp2x_flops(patches, multi_width, width)
        + _window_attention_flops(patches, queries, config.attention_window**2, width, config.compressor_num_heads)
        + mlp2x_flops(queries, width, text_width)
    )
    query_pass = sum(
        llm_flops(config.text_config, int(tokens), logits_tokens=0)
        for tokens in inputs["query_attention_mask"].sum(-1)
    )
    return views_of(inputs) * per_view + query_pass


def voco_llama_flops(config, inputs) -> int:
    """VoCo-LLaMA's projector is LLaVA-1.5's: every patch to the LLM width; the LLM does the compressing."""
    return llava_projector_flops(config, views_of(inputs))


def voco_llama_llm_flops(config, inputs) -> int:
    """The language model's passes of VoCo-LLaMA's inference prefill (`modeling/voco_prefill.py`), one prompt: each
    image with the text before it over the VoCo columns kept so far; the text before a video, then every frame over
    that shared context; the text after the last unit over the kept columns, with the LM head on its last token."""
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError("voco_llama_llm_flops counts one prompt at a time.")
    video = torch.zeros_like(ids, dtype=torch.bool) if config.video_token_id is None else ids == config.video_token_id
    layout = voco_layout(ids == config.voco_token_id, ids == config.image_token_id, video, config.num_voco_tokens)
    text_config, kept, start, total = config.text_config, 0, 0, 0
    for end in (layout.unit_ends[0].nonzero().flatten() + 1).tolist():
        frames = layout.frames[0, start:end]
        if not frames.any():  # an image and the text before it
            total += llm_flops(text_config, end - start, past_tokens=kept, logits_tokens=0)
        else:
            first = start + int((frames > 0).nonzero()[0])
            shared = kept + first - start
            total += llm_flops(text_config, first - start, past_tokens=kept, logits_tokens=0)
            _, lengths = torch.unique_consecutive(frames[first - start :], return_counts=True)
            for length in lengths.tolist():
                total += llm_flops(text_config, length, past_tokens=shared, logits_tokens=0)
        kept += int((ids[0, start:end] == config.voco_token_id).sum())
        start = end
    return total + llm_flops(text_config, ids.shape[1] - start, past_tokens=kept)


def visionzip_attention_flops(config, views: int = 1) -> int:
    """VisionZip's recomputed attention of one tower layer: the CLS query, the keys of CLS + N patches and the CLS
    row of scores, about (N + 2) E^2 multiply-adds per view. Run by the model, outside its compressor module."""
    tokens = config.vision_grid_size**2 + 1
    width = config.vision_config.hidden_size
    return views * (linear(1, width, width) + linear(tokens, width, width) + 2 * tokens * width)


def visionzip_flops(config, inputs) -> int:
    """The recomputed attention, the merge (key similarities of the M merged tokens to the C targets on the head
    width, then their sums on the tower width) and LLaVA's projector on the D + C kept tokens."""
    tokens = config.vision_grid_size**2 + 1
    width = config.vision_config.hidden_size
    head_dim = width // config.vision_config.num_attention_heads
    kept = config.dominant_tokens + config.contextual_tokens
    merged = tokens - kept
    merge = 2 * merged * config.contextual_tokens * (head_dim + width)
    per_view = merge + mlp2x_flops(kept, width, config.text_config.hidden_size)
    views = views_of(inputs)
    return visionzip_attention_flops(config, views) + views * per_view


def kv_cache_bytes(text_config, tokens: int, bytes_per_element: int, batch: int = 1) -> int:
    """Keys and values of every layer for `tokens` cached positions."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return 2 * text_config.num_hidden_layers * batch * kv_heads * head_dim * tokens * bytes_per_element
