"""VoCo-LLaMA's inference prefill, unit by unit: the masked single pass's outputs from plain causal passes.

The VoCo rule (`voco_rule`) lets a token see the VoCo columns of earlier units, the text since the last unit, and
its own block. So each image is one causal pass (the text before it and its block) over a cache of exactly what it
may see, after which the cache keeps only VoCo columns; each video's frames run in chunks side by side on the batch
axis, every frame over the same shared context (the cache and the text before the video), and give back their VoCo
columns in time order; the text after the last unit is one more pass. No (seq x seq) mask is built and memory is
bounded by one chunk of frames, whatever the length of the clip. Position ids are the compact ones of the single pass,
so its hidden states and its compressed cache come out the same (to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from ..compat import CACHE_NAME, output_cache


@dataclass
class ColumnCache:
    """One row's cache: per layer (keys, values) of shape (1, heads, columns, head_dim), and which columns are VoCo."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    voco: torch.BoolTensor

    def keep_voco(self) -> ColumnCache:
        """What later units may still see once a unit ends: the VoCo columns."""
        index = self.voco.nonzero().flatten()
        return ColumnCache(
            [(k.index_select(2, index), v.index_select(2, index)) for k, v in self.layers], self.voco[index]
        )

    def extended(self, layers: list[tuple[torch.Tensor, torch.Tensor]], voco: torch.BoolTensor) -> ColumnCache:
        """These columns with `layers`' columns (same batch of 1) after them."""
        if not self.layers:
            return ColumnCache(layers, voco)
        joined = [
            (torch.cat([k, nk], 2), torch.cat([v, nv], 2))
            for (k, v), (nk, nv) in zip(self.layers, layers, strict=True)
        ]
        return ColumnCache(joined, torch.cat([self.voco, voco]))


def causal_pass(
    language_model: nn.Module, context: ColumnCache, embeds: torch.Tensor, positions: torch.LongTensor
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A plain causal pass of (rows, new, hidden) embeddings over `context` (one row, shared by every new row).
    Returns their last hidden states and, per layer, their new (keys, values) columns."""
    rows = embeds.shape[0]
    past = context.voco.shape[0]
    cache = DynamicCache(
        ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in context.layers] or None
    )
    outputs = language_model(
        inputs_embeds=embeds, position_ids=positions, use_cache=True, return_dict=True, **{CACHE_NAME: cache}
    )
    new = [(layer.keys[:, :, past:], layer.values[:, :, past:]) for layer in output_cache(outputs).layers]
    return outputs.last_hidden_state, new


def prefill_row(
    language_model: nn.Module,
    embeds: torch.Tensor,
    positions: torch.LongTensor,
    voco: torch.BoolTensor,
    unit_ends: torch.BoolTensor,
    frames: torch.LongTensor,
    frames_per_chunk: int,
) -> tuple[torch.Tensor, ColumnCache]:
    """One row's real tokens, unit by unit: its last hidden states (tokens, hidden) and the columns a single pass's
    compressed cache keeps (VoCo columns and the text after the last unit), in order. `voco`, `unit_ends` and
    `frames` are the row's `voco_rule.VoCoLayout` entries over the same tokens."""
    hidden = embeds.new_empty(embeds.shape)
    context = ColumnCache([], voco.new_zeros(0))
    start = 0

    def run(begin: int, end: int) -> None:
        """Tokens [begin, end) in one pass over the context, which they join."""
        nonlocal context
        if end > begin:
            states, new = causal_pass(language_model, context, embeds[None, begin:end], positions[None, begin:end])
            hidden[begin:end] = states[0]
            context = context.extended(new, voco[begin:end])

    for end in (unit_ends.nonzero().flatten() + 1).tolist():
        first_frame = (frames[start:end] > 0).nonzero()
        if not len(first_frame):  # an image: the text before it and its block, then only VoCo columns stay
            run(start, end)
            context = context.keep_voco()
        else:  # a video: the text before it joins the shared context, then its frames, chunk by chunk
            video_start = start + int(first_frame[0])
            run(start, video_start)
            shared = context
            context = shared.keep_voco()
            ids = frames[video_start:end]
            bounds = torch.cat([(ids[1:] != ids[:-1]).nonzero().flatten() + 1, ids.new_tensor([len(ids)])])
            blocks = list(zip([0, *bounds[:-1].tolist()], bounds.tolist(), strict=True))
            for chunk in range(0, len(blocks), frames_per_chunk):
                context = frame_chunk(
                    language_model, shared, context, embeds, positions, voco, hidden,
                    [(video_start + a, video_start + b) for a, b in blocks[chunk : chunk + frames_per_chunk]],
                )  # fmt: skip
        start = end
    run(start, embeds.shape[0])
    return hidden, context


def frame_chunk(language_model, shared, context, embeds, positions, voco, hidden, spans) -> ColumnCache:
    """Frames (token spans of equal length) side by side over the shared context; their hidden states go into
    `hidden`, their VoCo columns after `context`'s, in order."""
    starts = [begin for begin, _ in spans]
    length = spans[0][1] - spans[0][0]
    if any(end - begin != length for begin, end in spans):
        raise ValueError("The frames of a video must all be blocks of the same length.")
    index = torch.tensor(starts, device=embeds.device)[:, None] + torch.arange(length, device=embeds.device)
    states, new = causal_pass(language_model, shared, embeds[index], positions[index])
    hidden[index.flatten()] = states.flatten(0, 1)
    columns = voco[index[0]].nonzero().flatten()  # the same in every frame
    kept = [
        (k[:, :, columns].transpose(0, 1).flatten(1, 2)[None], v[:, :, columns].transpose(0, 1).flatten(1, 2)[None])
        for k, v in new
    ]
    return context.extended(kept, voco.new_ones(len(spans) * len(columns)))
