"""Procedural clips for the video demo (`vtc demo --video`), made without downloads: one coloured shape moving left,
right, up or down on a plain light background.

A clip is a folder of `num_frames` PNG frames (a `video` in LLaVA-format records, as `vtc train` reads them); the
shape moves `step` pixels per frame along a straight path. Clips come in reversal pairs: the second clip of a pair has
the first's colour, shape, background and path, run backwards ("left" replays "right"'s frames in reverse, "up"
"down"'s), so no single frame and no set of frames tells the two directions apart, only their order. A model blind to
frame order can therefore be right on at most half of the held-out direction questions.

The splits follow the VoCo-LLaMA recipe the demo runs: a caption and the `FRAME_QUESTIONS` (what the shape is and
which half of the frame it is in) about one random frame of each training clip, as an image; the `PATH_QUESTIONS`
(where the shape is at the start and at the end) and the `VIDEO_QUESTIONS` (direction, colour, shape) about each
training clip; the `VIDEO_QUESTIONS` alone about each held-out clip. Every answer but a caption is one word.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from .synthetic import COLOURS, SHAPES, draw_shape

DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
VIDEO_QUESTIONS = {
    "direction": ("Which way does the shape move?", DIRECTIONS),
    "colour": ("What colour is the shape?", tuple(COLOURS)),
    "shape": ("Which shape is in the video?", SHAPES),
}
# Questions about single frames (the image stage before the video one): where the shape is, besides what it is.
FRAME_QUESTIONS = {
    "colour": ("What colour is the shape?", tuple(COLOURS)),
    "shape": ("Which shape is in the image?", SHAPES),
    "side": ("Is the shape on the left or the right?", ("left", "right")),
    "height": ("Is the shape at the top or the bottom?", ("top", "bottom")),
}
# Training-only questions about the first and last frames of a clip: reading a given frame is the step before
# comparing frames (held out, only VIDEO_QUESTIONS are asked).
PATH_QUESTIONS = {
    f"{kind} at the {moment}": (FRAME_QUESTIONS[kind][0].removesuffix("?") + f" at the {moment}?", options)
    for moment in ("start", "end")
    for kind, options in (("side", ("left", "right")), ("height", ("top", "bottom")))
}


def shape_positions(direction: str, start: int, across: int, num_frames: int, step: int) -> list[tuple[int, int]]:
    """The top-left corner (x, y) of the shape's box in each frame: `start` is where the path along the motion's axis
    begins, `across` the fixed coordinate on the other axis. "left" and "up" run "right"'s and "down"'s path backwards."""
    along = [start + step * t for t in range(num_frames)]
    if direction in ("left", "up"):
        along.reverse()
    return [(a, across) if direction in ("left", "right") else (across, a) for a in along]


def place(x: int, y: int, size: int, shape_size: int) -> dict[str, str]:
    """Which half of the frame the shape's centre lies in, across and down."""
    centre = shape_size / 2
    return {
        "side": "left" if x + centre < size / 2 else "right",
        "height": "top" if y + centre < size / 2 else "bottom",
    }


def qa_record(index: int, key: str, visual: str, placeholder: str, pairs: list[tuple[str, str]]) -> dict:
    """One conversation about one image or clip: the (question, answer) `pairs` in turn, the placeholder before the
    first question."""
    turns = []
    for number, (question, answer) in enumerate(pairs):
        text = f"{placeholder}\n{question}" if number == 0 else question
        turns += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
    return {"id": index, key: visual, "conversations": turns}


def conversation(index: int, key: str, visual: str, placeholder: str, asked: dict, answers: dict, rng) -> dict:
    """Every question of `asked` about one image or clip in one conversation, in a random order (so that each is
    also asked first, as the held-out questions are): one pass over the pixels trains them all."""
    pairs = [(question, answers[kind]) for kind, (question, _) in asked.items()]
    rng.shuffle(pairs)
    return qa_record(index, key, visual, placeholder, pairs)


def draw_clip(
    colour: str, shape: str, positions: list[tuple[int, int]], background: tuple, size: int, shape_size: int
) -> list[Image.Image]:
    """One frame per position: the shape, `shape_size` pixels across, on a plain background."""
    radius = shape_size // 2
    frames = []
    for x, y in positions:
        frame = Image.new("RGB", (size, size), background)
        draw_shape(ImageDraw.Draw(frame), shape, x + radius, y + radius, radius, COLOURS[colour])
        frames.append(frame)
    return frames


def make_video_dataset(
    folder: str | Path,
    num_train: int = 2000,
    num_test: int = 200,
    size: int = 32,
    num_frames: int = 8,
    step: int = 2,
    shape_size: int = 8,
    seed: int = 0,
) -> dict:
    """Writes `num_train` training and `num_test` held-out clips to `folder` (`clips/NNNN/TT.png`) with LLaVA JSON
    records, and returns their paths.

    Each pair of clips draws a colour, a shape, a light background, a forward direction (right or down, its pair's
    left or up), where the path starts along the motion (so that all `num_frames` positions fit) and where it lies
    across it; the last `num_test` clips are held out. The files:

    * `captions.json`: one random frame of each training clip as an image, "Describe the image." and its caption
      (colour, shape, side and height);
    * `frames.json`: the same frames, each asked the four `FRAME_QUESTIONS`;
    * `paths.json`: each training clip asked the four `PATH_QUESTIONS`;
    * `questions.json`: each training clip asked the `VIDEO_QUESTIONS` and the `PATH_QUESTIONS`;
    * `test.json`: each held-out clip asked the three `VIDEO_QUESTIONS`.

    Returns those paths by split name, `clips` (the folder the records' paths are relative to) and `chance` (the
    accuracy of a uniform guess per `VIDEO_QUESTIONS` kind). Raises `ValueError` if a count is odd (clips come in
    pairs) or if a `shape_size`-pixel shape moving `step` pixels a frame does not fit a `size`-pixel frame.
    """
    if num_train % 2 or num_test % 2:
        raise ValueError(f"Clips come in reversal pairs: num_train ({num_train}) and num_test must be even.")
    travel, extent = step * (num_frames - 1), shape_size + 1  # PIL draws both edges of a box
    if travel + extent > size:
        raise ValueError(f"A {shape_size}-pixel shape moving {travel} pixels does not fit a {size}-pixel frame.")
    folder = Path(folder)
    rng = random.Random(seed)
    captions, frames, paths, questions, test = [], [], [], [], []
    for pair in range((num_train + num_test) // 2):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        forward = rng.choice(("right", "down"))  # its reversal pair goes left or up
        start, across = rng.randint(0, size - extent - travel), rng.randint(0, size - extent)
        background = tuple(rng.randint(215, 245) for _ in range(3))
        for order, direction in enumerate((forward, OPPOSITE[forward])):
            index = 2 * pair + order
            name = f"clips/{index:04d}"
            (folder / name).mkdir(parents=True, exist_ok=True)
            positions = shape_positions(direction, start, across, num_frames, step)
            for t, frame in enumerate(draw_clip(colour, shape, positions, background, size, shape_size)):
                frame.save(folder / name / f"{t:02d}.png")
            answers = {"direction": direction, "colour": colour, "shape": shape}
            for moment, (x, y) in (("start", positions[0]), ("end", positions[-1])):
                answers.update(
                    {f"{kind} at the {moment}": value for kind, value in place(x, y, size, shape_size).items()}
                )
            if 2 * pair >= num_train:
                test.extend(
                    qa_record(index, "video", name, "<video>", [(question, answers[kind])])
                    for kind, (question, _) in VIDEO_QUESTIONS.items()
                )
                continue
            questions.append(
                conversation(index, "video", name, "<video>", {**VIDEO_QUESTIONS, **PATH_QUESTIONS}, answers, rng)
            )
            paths.append(conversation(index, "video", name, "<video>", PATH_QUESTIONS, answers, rng))
            t = rng.randrange(num_frames)
            frame, frame_answers = f"{name}/{t:02d}.png", {"colour": colour, "shape": shape}
            frame_answers.update(place(*positions[t], size, shape_size))
            caption = f"a {colour} {shape} on the {frame_answers['side']} at the {frame_answers['height']}"
            captions.append(qa_record(index, "image", frame, "<image>", [("Describe the image.", caption)]))
            frames.append(conversation(index, "image", frame, "<image>", FRAME_QUESTIONS, frame_answers, rng))
    files = {}
    splits = {"captions": captions, "frames": frames, "paths": paths, "questions": questions, "test": test}
    for split, records in splits.items():
        files[split] = folder / f"{split}.json"
        files[split].write_text(json.dumps(records))
    chance = {kind: 1 / len(options) for kind, (_, options) in VIDEO_QUESTIONS.items()}
    return {**files, "clips": folder, "chance": chance}
