"""Turning whatever a user passes as a video into its sampled frames, as RGB PIL images, or a clear error.

A video is a list of frames (PIL images, or 3-D uint8 arrays / tensors), a 4-D uint8 array (frames, height, width,
channels) or tensor (frames, channels, height, width), or a path or URL decoded by transformers' `load_video`. Frames
are chosen with transformers' `VideosKwargs` (`num_frames` | `fps`, `video_metadata`, `do_sample_frames`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.video_utils import VideoMetadata, load_video

from .images import load_image

CHANNEL_COUNTS = (1, 3, 4)
# The `VideosKwargs` that choose frames or say how arrays are laid out; the remaining ones are pixel kwargs, which the
# image processor applies to every frame as to an image.
FRAME_KWARGS = ("do_sample_frames", "num_frames", "fps", "video_metadata", "return_metadata", "input_data_format")


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("torch")


def _is_frame(value) -> bool:
    return isinstance(value, Image.Image) or (_is_array(value) and value.ndim == 3)


def _is_video(value) -> bool:
    if isinstance(value, (str, os.PathLike)):
        return True
    if _is_array(value):
        return value.ndim == 4
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_frame(frame) for frame in value)


def flatten_videos(videos) -> list:
    """One entry per video, in order. Lists of videos may nest (one list per sample, as `apply_chat_template`
    batches them); an empty list is a sample without videos."""
    if videos is None:
        return []
    if _is_video(videos):
        return [videos]
    if isinstance(videos, (list, tuple)):
        return [video for item in videos for video in flatten_videos(item)]
    shape = f" of shape {tuple(videos.shape)}" if _is_array(videos) else ""
    raise TypeError(
        "A video is a list of frames (PIL images or 3-D arrays), a 4-D uint8 array or tensor, or a path or URL; got "
        f"{type(videos).__name__}{shape}."
    )


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video are kept, from transformers' `VideosKwargs`.

    `do_sample_frames` defaults to True exactly when `num_frames` or `fps` is given (what `apply_chat_template`
    sets); sampling with neither keeps every frame. `max_num_frames` bounds the frames kept: checked after sampling,
    and for files before anything is decoded.
    """

    do_sample_frames: bool
    num_frames: int | None
    fps: float | None
    max_num_frames: int | None

    @classmethod
    def from_kwargs(cls, videos_kwargs: dict, max_num_frames: int | None) -> FrameSampling:
        num_frames, fps = videos_kwargs.get("num_frames"), videos_kwargs.get("fps")
        do_sample_frames = videos_kwargs.get("do_sample_frames")
        if num_frames is not None and fps is not None:
            raise ValueError(f"num_frames={num_frames} and fps={fps} are mutually exclusive; pass one of them.")
        if do_sample_frames is False and (num_frames is not None or fps is not None):
            raise ValueError(
                "do_sample_frames=False keeps every frame, but num_frames or fps asks to sample; drop one."
            )
        if do_sample_frames is None:
            do_sample_frames = num_frames is not None or fps is not None
        return cls(bool(do_sample_frames), num_frames, fps, max_num_frames)

    def indices(self, index: int, total_num_frames: int, video_fps: float | None) -> np.ndarray:
        """The frames of video `index` to keep: all of them, or n = `num_frames` (or `fps` x duration) spread as
        `arange(n) * total // n`. That is transformers 5.x's `default_sample_indices_fn`, written here because
        4.57's repeats frames and miscounts them (its float step), so that both releases sample alike."""
        if total_num_frames == 0:
            raise ValueError(f"video {index} has no frames.")
        num_frames = self.num_frames if self.do_sample_frames else None
        if self.do_sample_frames and self.fps is not None:
            if not video_fps:
                raise ValueError(
                    f"Sampling video {index} at fps={self.fps} needs its own frame rate: pass video_metadata="
                    "{'fps': ...} for frames given in memory, or sample with num_frames."
                )
            num_frames = max(1, int(total_num_frames / video_fps * self.fps))
            if num_frames > total_num_frames:
                raise ValueError(
                    f"fps={self.fps} asks for {num_frames} frames of video {index}, which has {total_num_frames} at "
                    f"{video_fps} fps; lower fps (frames are never repeated)."
                )
        elif num_frames is not None and num_frames > total_num_frames:
            raise ValueError(
                f"num_frames={num_frames} is more than the {total_num_frames} frames of video {index}; lower "
                "num_frames (frames are never repeated)."
            )
        if num_frames is None:
            indices = np.arange(total_num_frames)
        else:
            indices = np.arange(num_frames) * total_num_frames // num_frames
        if self.max_num_frames is not None and len(indices) > self.max_num_frames:
            raise ValueError(
                f"video {index} has {len(indices)} frames after sampling, more than max_num_frames="
                f"{self.max_num_frames}: sample fewer with num_frames= or fps=, or raise the processor's max_num_frames."
            )
        return indices


def load_videos(videos: list, videos_kwargs: dict, max_num_frames: int | None) -> tuple[list, list]:
    """Each video's kept frames as RGB PIL images, and its `VideoMetadata` (`frames_indices` set). Pops the frame
    kwargs (`FRAME_KWARGS`) from `videos_kwargs`, leaving the pixel kwargs for the image processor."""
    sampling = FrameSampling.from_kwargs(videos_kwargs, max_num_frames)
    metadata = _metadata_list(videos_kwargs.get("video_metadata"), len(videos))
    input_data_format = videos_kwargs.get("input_data_format")
    for key in FRAME_KWARGS:
        videos_kwargs.pop(key, None)
    loaded = [
        _load_file(video, index, sampling, given)
        if isinstance(video, (str, os.PathLike))
        else _load_in_memory(video, index, sampling, given, input_data_format)
        for index, (video, given) in enumerate(zip(videos, metadata, strict=True))
    ]
    return [frames for frames, _ in loaded], [video_metadata for _, video_metadata in loaded]


def _metadata_list(video_metadata, num_videos: int) -> list:
    """One metadata entry (a dict, a `VideoMetadata` or None) per video, from one entry or a (nested) list."""
    if video_metadata is None:
        return [None] * num_videos
    if not isinstance(video_metadata, (list, tuple)):
        video_metadata = [video_metadata]
    flat = [entry for item in video_metadata for entry in (item if isinstance(item, (list, tuple)) else [item])]
    if len(flat) != num_videos:
        raise ValueError(f"Got {len(flat)} video_metadata entries for {num_videos} videos; pass one per video.")
    return flat


def _decoding_backend() -> str:
    """The first of transformers' video decoders whose library is installed; pyav (its default) when none is, so
    that `load_video` raises its own error naming what to install."""
    from transformers.utils import is_av_available, is_cv2_available, is_decord_available, is_torchcodec_available

    for backend, available in (
        ("pyav", is_av_available),
        ("decord", is_decord_available),
        ("torchcodec", is_torchcodec_available),
        ("opencv", is_cv2_available),  # last: it cannot read URLs
    ):
        if available():
            return backend
    return "pyav"


def _load_file(video, index: int, sampling: FrameSampling, given) -> tuple[list[Image.Image], VideoMetadata]:
    """A path or URL decoded by transformers' `load_video`, only the kept frames (the count is checked before)."""
    if given is not None:
        raise ValueError(
            f"video {index} is a file, whose metadata is read from it: its video_metadata entry must be None."
        )
    location = str(video)
    if not location.startswith(("http://", "https://")) and not Path(location).is_file():
        raise FileNotFoundError(f"Video file not found: {location}")

    def sample_indices_fn(metadata, **kwargs):
        return sampling.indices(index, metadata.total_num_frames, metadata.fps)

    frames, metadata = load_video(location, backend=_decoding_backend(), sample_indices_fn=sample_indices_fn)
    return [load_image(frame) for frame in frames], metadata


def _load_in_memory(
    video, index: int, sampling: FrameSampling, given, input_data_format
) -> tuple[list[Image.Image], VideoMetadata]:
    if _is_array(video):  # a 4-D block
        frames = list(_channels_last(video, index, input_data_format))
    else:
        frames = [
            frame if isinstance(frame, Image.Image) else _channels_last(frame, index, input_data_format)
            for frame in video
        ]
    total = len(frames)
    given = dict(given or {})
    if given.get("total_num_frames") not in (None, total):
        raise ValueError(
            f"video {index} has {total} frames but its video_metadata says total_num_frames="
            f"{given['total_num_frames']}."
        )
    metadata = VideoMetadata(**{**given, "total_num_frames": total})
    indices = sampling.indices(index, total, metadata.fps)
    metadata.frames_indices = indices.tolist()
    return [load_image(frames[i]) for i in indices], metadata


def _channels_last(array, index: int, input_data_format) -> np.ndarray:
    """Frames as (..., height, width[, channels]) uint8. Arrays are read as channels last and tensors as channels
    first (torchvision's layout), unless `input_data_format` says otherwise or only the other axis holds 1, 3 or 4
    channels."""
    is_tensor = not isinstance(array, np.ndarray)
    array = array.detach().cpu().numpy() if is_tensor else array
    if array.dtype != np.uint8:
        raise ValueError(f"video {index} must hold uint8 pixels (0-255), got dtype {array.dtype}.")
    channel_axis = array.ndim - 3  # (frames,) channels, height, width in the channels-first layout
    fits_first, fits_last = array.shape[channel_axis] in CHANNEL_COUNTS, array.shape[-1] in CHANNEL_COUNTS
    layout = getattr(input_data_format, "value", input_data_format)
    if layout is None:
        first = fits_first and (is_tensor or not fits_last)
        layout = "channels_first" if first else "channels_last"
    if layout == "channels_first":
        array = np.moveaxis(array, channel_axis, -1)
    elif layout != "channels_last":
        raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {layout!r}.")
    if array.shape[-1] not in CHANNEL_COUNTS:
        raise ValueError(
            f"video {index} of shape {tuple(array.shape)} has no axis of {CHANNEL_COUNTS} channels where its layout "
            "puts one: pass (frames, height, width, channels) arrays or (frames, channels, height, width) tensors."
        )
    return array[..., 0] if array.shape[-1] == 1 else array
