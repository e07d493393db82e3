"""Training videos: a record's `video` (a folder of frames, a video file, or the frames themselves) -> its sampled
frames, for processors that take videos (VoCo-LLaMA's).

Frames are sampled with the processor's own rule (transformers' uniform `arange(n) * total // n`), a file is decoded
by transformers' `load_video` (only the kept frames), and a folder's frames are its image files in natural order
(`frame_2` before `frame_10`); only the kept ones are read.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from PIL import Image

from ...processing.images import load_image
from ...processing.videos import FrameSampling, load_videos

FRAME_EXTENSIONS = frozenset(extension.lower() for extension in Image.registered_extensions())


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def frame_files(folder: Path) -> list[Path]:
    """The image files of a folder of frames, in natural order; other files are not frames and are left out."""
    files = [path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in FRAME_EXTENSIONS]
    return sorted(files, key=_natural_key)


def load_frames(video, num_frames: int | None, max_num_frames: int | None) -> list[Image.Image]:
    """`num_frames` frames of `video` spread uniformly (every frame when None), as RGB PIL images.

    `video` is a folder of frame images, a video file (a path or a `datasets` Video dict), or a list of frames (PIL
    images, arrays, or `datasets` Image dicts). A video without frames, fewer frames than `num_frames` (never
    repeated) or more than `max_num_frames` kept raise `ValueError`; a missing path `FileNotFoundError`.
    """
    kwargs = {"num_frames": num_frames} if num_frames is not None else {}
    if isinstance(video, dict):  # a `datasets` Video feature that was not decoded
        video = video.get("path")
    if isinstance(video, (str, os.PathLike)) and Path(video).is_dir():
        files = frame_files(Path(video))
        if not files:
            raise ValueError(f"the folder {video} holds no frames (no image files).")
        indices = FrameSampling.from_kwargs(kwargs, max_num_frames).indices(0, len(files), None)
        return [load_image(str(files[index])) for index in indices]
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError("the video has no frames.")
        video = [_decoded(frame) for frame in video]
    frames, _ = load_videos([video], kwargs, max_num_frames)
    return frames[0]


def _decoded(frame):
    """A `datasets` Image dict (not decoded) as a PIL image or its path; any other frame as it is."""
    if not isinstance(frame, dict):
        return frame
    return load_image(frame["path"] if frame.get("bytes") is None else Image.open(io.BytesIO(frame["bytes"])))


def video_placeholders(conversations: list[dict], image_token: str, video_token: str) -> list[dict]:
    """A video record's conversation with its `<image>` placeholders read as `<video>`: LLaMA-VID's and
    LLaVA-NeXT-Video's video records (Video-ChatGPT QA among them) write the video's place as `<image>`."""
    return [
        {
            key: value.replace(image_token, video_token)
            if key in ("value", "content") and isinstance(value, str)
            else value
            for key, value in turn.items()
        }
        for turn in conversations
    ]
