"""A procedural dataset the demo trains on without downloads: one coloured shape per image, in its left or right half.

Stage 1 gets captions ("a red circle on the left"); stage 2 asks every question (colour, shape, position; one-word
answers) about every training image; the test split asks one random question per held-out image. Chance accuracy is the mean of 1/len(options) over the questions asked.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right")
QUESTIONS = {
    "colour": ("What colour is the shape?", tuple(COLOURS)),
    "shape": ("Which shape is in the image?", SHAPES),
    "position": ("Is the shape on the left or the right?", POSITIONS),
}


def draw_scene(colour: str, shape: str, position: str, size: int, rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(215, 245) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = rng.randint(size // 5, size // 4)  # at 32 px, 12 to 16 px across: 3 to 4 patches of 4 px
    # The whole shape lies in its half, so that "left" or "right" never hinges on a pixel or two across the middle.
    cx = (
        rng.randint(radius, size // 2 - radius)
        if position == "left"
        else rng.randint(size // 2 + radius, size - radius)
    )
    cy = rng.randint(radius, size - radius)
    draw_shape(draw, shape, cx, cy, radius, COLOURS[colour])
    return image


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, radius: int, fill) -> None:
    """A circle, square or triangle of `radius` around (cx, cy); also draws region masks (fill 255 on an 'L' image)."""
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)


def make_shapes_dataset(
    folder: str | Path, num_train: int = 240, num_test: int = 60, size: int = 64, seed: int = 0
) -> dict:
    """Writes images and three LLaVA JSON files (`captions.json`, `questions.json`, `test.json`) into `folder`.

    Returns their paths and the chance accuracy of the test questions.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions, questions, test = [], [], []
    for index in range(num_train + num_test):
        colour, shape, position = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(POSITIONS)
        name = f"images/{index:04d}.png"
        draw_scene(colour, shape, position, size, rng).save(folder / name)
        answers = {"colour": colour, "shape": shape, "position": position}

        def record(kind: str, index=index, name=name, answers=answers) -> dict:
            human = f"<image>\n{QUESTIONS[kind][0]}"
            turns = [{"from": "human", "value": human}, {"from": "gpt", "value": answers[kind]}]
            return {"id": index, "image": name, "conversations": turns}

        if index >= num_train:  # one question per held-out image
            test.append(record(rng.choice(list(QUESTIONS))))
            continue
        questions.extend(record(kind) for kind in QUESTIONS)  # every question about every training image
        caption = f"a {colour} {shape} on the {position}"
        captions.append(
            {
                "id": index,
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": caption},
                ],
            }
        )
    paths = {}
    for split, records in (("captions", captions), ("questions", questions), ("test", test)):
        paths[split] = folder / f"{split}.json"
        paths[split].write_text(json.dumps(records))
    kinds = [next(k for k, (q, _) in QUESTIONS.items() if q in r["conversations"][0]["value"]) for r in test]
    chance = sum(1 / len(QUESTIONS[kind][1]) for kind in kinds) / len(kinds)
    return {**paths, "images": folder, "chance": chance}
