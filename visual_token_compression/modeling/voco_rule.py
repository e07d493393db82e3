"""VoCo-LLaMA's attention rule and position ids, as pure functions of the token layout (docs/voco_llama.md).

A *block* is a run of placeholders (`<image>`, or `<video>` for one frame) and the tokens after it up to the end of
the next `<voco>` run. A *video* is a sequence of frame blocks, each starting right after the previous one's VoCo
run; a *unit* is an image or a video, and it ends at its last VoCo token. Query i may attend key j iff
(a) j <= i and j is not padding, (b) no unit ends between them (i <= seal(j), where seal(j) is the end of the first
unit ending at or after j; VoCo tokens are never sealed), and (c) i and j are not in different frames of one video;
(d) every query sees itself, so that no row is empty. Without videos, (b) is the original image rule and (c) is
vacuous.

Position ids are compact: every frame of a video starts `num_voco_tokens` positions after the previous one, so the
frames keep an image's internal positions, their VoCo runs hold consecutive positions (the text reads the video as an
image with T * k VoCo tokens) and the order of the frames is in the positions. Each row's shift is its `rope_delta`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class VoCoLayout:
    """The layout of a batch of sequences, per token (batch, seq).

    seals: the last index at which a query may still see the token (`seq`: never sealed).
    unit_ends: (bool) the last VoCo token of each image and each video.
    frames: the frame block the token belongs to (numbered within its row, 0: none).
    videos: the video the token's frame belongs to (numbered within its row, 0: none).
    position_shift: how far compact position ids lie behind the tokens' count (frames before it, minus k each).
    frames_per_video: each row's list of frame counts, videos in text order.
    """

    seals: torch.LongTensor
    unit_ends: torch.BoolTensor
    frames: torch.LongTensor
    videos: torch.LongTensor
    position_shift: torch.LongTensor
    frames_per_video: list[list[int]]

    @property
    def rope_deltas(self) -> torch.LongTensor:
        """(batch,) what compact positions add to a token's count after the whole sequence (0 or negative)."""
        return -self.position_shift[:, -1] if self.position_shift.shape[1] else self.position_shift.new_zeros(0)


def _previous(mask: torch.Tensor) -> torch.Tensor:
    return F.pad(mask[:, :-1], (1, 0), value=False)


def _next(mask: torch.Tensor) -> torch.Tensor:
    return F.pad(mask[:, 1:], (0, 1), value=False)


def voco_layout(
    voco_mask: torch.Tensor,
    image_mask: torch.Tensor,
    video_mask: torch.Tensor,
    num_voco_tokens: int,
    restart_frames: bool = False,
) -> VoCoLayout:
    """The blocks, frames, videos and seals of a batch, from where its `<voco>`, `<image>` and `<video>` tokens are
    (each (batch, seq) bool). Every block must end with a VoCo run (`VoCoLlamaModel.check_voco_layout`).

    `restart_frames`: every frame of a video at its first frame's positions (the text after the video as compact):
    the order-blind control of `config.video_positions="restart"`, never the default."""
    batch, length = voco_mask.shape
    positions = torch.arange(length, device=voco_mask.device).expand(batch, -1)
    run_end = voco_mask & ~_next(voco_mask)
    video_start = video_mask & ~_previous(video_mask)
    block_start = (image_mask & ~_previous(image_mask)) | video_start
    started = block_start.long().cumsum(-1)
    ended_before = run_end.long().cumsum(-1) - run_end.long()
    block = torch.where(started > ended_before, started, 0)  # the block a token is in, 1-based; 0 outside blocks

    # A block is a frame when it starts with `<video>`; blocks are numbered per row, 0 stands for "none".
    is_frame_block = torch.zeros(batch, length + 1, dtype=torch.bool, device=voco_mask.device)
    is_frame_block.scatter_(1, torch.where(video_start, started, 0), video_start)
    is_frame_block[:, 0] = False
    frames = torch.where(is_frame_block.gather(1, block), block, 0)

    # A frame starting right after a frame's VoCo run continues that video; its predecessor's end is no seal.
    frame_end = run_end & (frames > 0)
    continued_end = frame_end & _next(video_start)
    new_video = video_start & ~_previous(frame_end)
    videos = torch.where(frames > 0, new_video.long().cumsum(-1), 0)
    unit_ends = run_end & ~continued_end
    seal_points = torch.where(unit_ends, positions, length)
    seals = seal_points.flip(-1).cummin(-1).values.flip(-1)
    seals = torch.where(voco_mask, length, seals)

    # Compact positions: after a frame that another frame of its video follows, take back its length minus k.
    frame_lengths = torch.zeros(batch, length + 1, dtype=torch.long, device=voco_mask.device)
    frame_lengths.scatter_add_(1, frames, torch.ones_like(frames))
    take_back = torch.where(continued_end, frame_lengths.gather(1, frames) - num_voco_tokens, 0)
    position_shift = take_back.cumsum(-1) - take_back
    if restart_frames:  # frame t also takes back the (t - 1) * k positions compact ids advance it by
        starts_so_far = video_start.long().cumsum(-1)
        video_first = torch.where(new_video, starts_so_far, 0).cummax(-1).values
        position_shift = position_shift + torch.where(frames > 0, (starts_so_far - video_first) * num_voco_tokens, 0)

    frames_per_video = [
        torch.bincount(row[starts])[1:].tolist() for row, starts in zip(videos, video_start, strict=True)
    ]
    return VoCoLayout(seals, unit_ends, frames, videos, position_shift, frames_per_video)


def sealing_positions(voco_mask: torch.Tensor) -> torch.Tensor:
    """For each token of image-only sequences, the last index at which a query may still see it (batch, seq): the
    last VoCo token of the next VoCo run at or after it; `seq` for VoCo tokens and tokens after the last run. With one
    image this is the original rule: text after the last VoCo token cannot see anything before the first one."""
    no_videos = torch.zeros_like(voco_mask)
    return voco_layout(voco_mask, no_videos, no_videos, 1).seals


def voco_attention_mask(
    voco_mask: torch.Tensor,
    key_padding_mask: torch.Tensor,
    past_length: int,
    dtype: torch.dtype,
    layout: VoCoLayout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive (batch, 1, query, past + query) mask: causal, padding and the VoCo rule, 0 or finfo.min.

    `layout` is the new tokens' (`voco_layout`); without one they hold images only (`sealing_positions`). Cached
    keys are never sealed and in no frame. A float mask rather than a bool one, because eager attention *adds* the
    mask (a bool mask leaks there). Returns the mask and `keep` (batch, query): the new tokens later tokens can still
    attend to.
    """
    batch, query_length = voco_mask.shape
    device = voco_mask.device
    key_length = past_length + query_length
    new_seals = sealing_positions(voco_mask) if layout is None else layout.seals
    seals = torch.cat([torch.full((batch, past_length), key_length, device=device), new_seals + past_length], -1)
    queries = torch.arange(past_length, key_length, device=device)[None, :, None]
    keys = torch.arange(key_length, device=device)[None, None, :]
    allowed = (keys <= queries) & key_padding_mask[:, None, :] & (queries <= seals[:, None, :])
    if layout is not None and bool(layout.frames.any()):
        past = voco_mask.new_zeros(batch, past_length, dtype=torch.long)
        key_frames, key_videos = torch.cat([past, layout.frames], -1), torch.cat([past, layout.videos], -1)
        same_video = (layout.videos[:, :, None] == key_videos[:, None, :]) & (layout.videos[:, :, None] > 0)
        allowed &= ~(same_video & (layout.frames[:, :, None] != key_frames[:, None, :]))
    # Padding queries keep their own key, so that no row is fully masked (NaN under SDPA); their outputs are unused.
    allowed |= keys == queries
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    keep = key_padding_mask[:, past_length:] & (seals[:, past_length:] == key_length)
    return mask[:, None], keep
