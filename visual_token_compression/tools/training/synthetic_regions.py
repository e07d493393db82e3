"""Procedural region scenes for `vtc demo --regions`: three shapes per image, asked about one by its mask.

Each scene holds a circle, a square and a triangle, in three distinct colours, one in each third of a wide image,
so that the image alone never says which shape a question means: only its region mask does. The regions of a scene
are numbered in a random order (`region1` is any of the three), so the numbers carry no position either.

Stage 1 gets a caption per scene; the region stage asks every question (colour and shape of every region) about every
training scene, as one conversation; the test split asks one random question about one random region of each
held-out scene. Without its mask a question is answered at chance among the scene's three shapes (1/3).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from .synthetic import COLOURS, SHAPES, draw_shape

REGION_QUESTIONS = {
    "colour": "What colour is region{index}<mask>?",
    "shape": "What shape is region{index}<mask>?",
}


def draw_region_scene(width: int, height: int, rng: random.Random) -> tuple[Image.Image, list[dict]]:
    """A scene and its shapes, left to right: each a dict with its colour, shape and 'L' mask image."""
    background = tuple(rng.randint(215, 245) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    shapes, colours = rng.sample(SHAPES, len(SHAPES)), rng.sample(list(COLOURS), len(SHAPES))
    slot = width // len(SHAPES)
    objects = []
    for index, (shape, colour) in enumerate(zip(shapes, colours, strict=True)):
        # 20 to 28 px across in a 32 px slot: 5 to 7 patches of the demo's 4 px, enough for the outline to show.
        radius = rng.randint(min(slot, height) // 3, min(slot, height) // 2 - 2)
        cx = rng.randint(index * slot + radius, (index + 1) * slot - radius - 1)
        cy = rng.randint(radius, height - radius - 1)
        draw_shape(draw, shape, cx, cy, radius, COLOURS[colour])
        mask = Image.new("L", (width, height), 0)
        draw_shape(ImageDraw.Draw(mask), shape, cx, cy, radius, 255)
        objects.append({"colour": colour, "shape": shape, "mask": mask})
    return image, objects


def make_region_dataset(
    folder: str | Path, num_train: int = 1000, num_test: int = 120, width: int = 96, height: int = 32, seed: int = 0
) -> dict:
    """Writes images, masks (PNG) and three LLaVA JSON files with a `regions` field (`captions.json`,
    `questions.json`, `test.json`) into `folder`. Returns their paths and the chance accuracy without masks."""
    folder = Path(folder)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions, questions, test = [], [], []
    for index in range(num_train + num_test):
        image, objects = draw_region_scene(width, height, rng)
        name = f"images/{index:04d}.png"
        image.save(folder / name)
        numbered = rng.sample(range(len(objects)), len(objects))  # region k+1 is objects[numbered[k]]
        masks = []
        for region, which in enumerate(numbered):
            masks.append(f"masks/{index:04d}_{region + 1}.png")
            objects[which]["mask"].save(folder / masks[-1])
        asked = [(kind, region) for kind in REGION_QUESTIONS for region in range(len(objects))]
        if index >= num_train:
            asked = [rng.choice(asked)]
        else:
            rng.shuffle(asked)
        turns, regions = [], []
        for turn, (kind, region) in enumerate(asked):
            question = REGION_QUESTIONS[kind].format(index=region + 1)
            turns.append({"from": "human", "value": ("<image>\n" if turn == 0 else "") + question})
            turns.append({"from": "gpt", "value": objects[numbered[region]][kind]})
            regions.append({"mask": masks[region]})
        record = {"id": index, "image": name, "conversations": turns, "regions": regions}
        if index >= num_train:
            test.append(record)
            continue
        questions.append(record)
        described = ", ".join(f"a {obj['colour']} {obj['shape']}" for obj in objects)
        caption = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": described}]
        captions.append({"id": index, "image": name, "conversations": caption})
    paths = {}
    for split, records in (("captions", captions), ("questions", questions), ("test", test)):
        paths[split] = folder / f"{split}.json"
        paths[split].write_text(json.dumps(records))
    return {**paths, "images": folder, "chance": 1 / len(SHAPES)}
