"""`vtc demo --video`: the synthetic clips (opposite directions are the same frames reversed), the whole pipeline at a
fraction of its steps (the table, the saved model, the control's positions), and the shipped demo's accuracy."""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

from visual_token_compression.tools.cli import main
from visual_token_compression.tools.demo_video import METHODS, NUM_FRAMES, NUM_TEST, run_video_demo
from visual_token_compression.tools.training.synthetic_video import (
    FRAME_QUESTIONS,
    OPPOSITE,
    PATH_QUESTIONS,
    VIDEO_QUESTIONS,
    draw_clip,
    make_video_dataset,
    shape_positions,
)

ACCURACY_LINE = re.compile(r"voco_llama video accuracy: direction (\d\.\d{3}), colour (\d\.\d{3}), shape (\d\.\d{3})")
ROW = re.compile(r"\| (.+?) \| (\d+) \| (.+?) \| " + r" \| ".join([r"(\d\.\d{3}) ± (\d\.\d{3})"] * 3) + r" \|")


def frames(folder, clip: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(folder / clip / f"{t:02d}.png")) for t in range(NUM_FRAMES)]


def pairs(record: dict) -> dict[str, str]:
    """A record's answers by question, the placeholder left out."""
    turns = [turn["value"].split("\n")[-1] for turn in record["conversations"]]
    return dict(zip(turns[::2], turns[1::2], strict=True))


def test_opposite_directions_are_the_same_frames_reversed(tmp_path):
    """Clips come in reversal pairs: the second replays the first's frames backwards, so no frame and no set of frames
    tells the two directions apart; the shape moves 2 pixels a frame, and only the direction's answer differs. A
    training clip is one conversation asking every video and path question once, the placeholder before the first;
    a held-out clip gets one record per video question."""
    data = make_video_dataset(tmp_path, num_train=6, num_test=4, seed=3)
    test = json.loads(data["test"].read_text())
    questions = json.loads(data["questions"].read_text())
    asked = [question for question, _ in {**VIDEO_QUESTIONS, **PATH_QUESTIONS}.values()]
    assert len(questions) == 6 and len(test) == 4 * len(VIDEO_QUESTIONS)
    for record in questions:
        assert sorted(pairs(record)) == sorted(asked) and len(record["conversations"]) == 2 * len(asked)
        assert [turn["value"].count("<video>") for turn in record["conversations"]] == [1] + [0] * (2 * len(asked) - 1)
    paths = json.loads(data["paths"].read_text())
    assert [sorted(pairs(record)) for record in paths] == [sorted(q for q, _ in PATH_QUESTIONS.values())] * 6
    assert all(len(pairs(record)) == 1 for record in test)
    frame_records = json.loads(data["frames"].read_text())
    assert [sorted(pairs(record)) for record in frame_records] == [sorted(q for q, _ in FRAME_QUESTIONS.values())] * 6
    assert [record["image"].rsplit("/", 1)[0] for record in frame_records] == [record["video"] for record in questions]
    answers = {record["video"]: {} for record in questions + test}
    for record in questions + test:
        answers[record["video"]].update(pairs(record))
    direction, colour, shape = (question for question, _ in VIDEO_QUESTIONS.values())
    clips = [record["video"] for record in questions + test[:: len(VIDEO_QUESTIONS)]]
    for first, second in zip(clips[::2], clips[1::2], strict=True):
        one, two = frames(tmp_path, first), frames(tmp_path, second)
        assert all(np.array_equal(a, b) for a, b in zip(one, two[::-1], strict=True))
        assert not np.array_equal(one[0], one[-1])
        a, b = answers[first], answers[second]
        assert OPPOSITE[a[direction]] == b[direction]
        assert a[colour] == b[colour] and a[shape] == b[shape]
    path = shape_positions("left", start=3, across=9, num_frames=NUM_FRAMES, step=2)
    assert path == [(3 + 2 * t, 9) for t in reversed(range(NUM_FRAMES))]
    assert shape_positions("down", 3, 9, NUM_FRAMES, 2) == [(9, y) for y, _ in reversed(path)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The demo at 1% of its steps on 20 training and 4 held-out clips, saved: (entries, printed lines, folder)."""
    folder = tmp_path_factory.mktemp("video-demo") / "model"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        entries = run_video_demo(save=str(folder), steps_scale=0.01, num_train=20, num_test=4)
    return entries, printed.getvalue().strip().splitlines(), folder


def test_the_video_demo_prints_and_saves_one_table(tiny_run):
    entries, lines, folder = tiny_run
    rows = [ROW.fullmatch(line) for line in lines if line.startswith("| ") and not line.startswith("| method")]
    chance = [line for line in lines if line.startswith("| chance")]
    rows = [row for row in rows if row]
    assert [row.group(1) for row in rows] == list(METHODS), lines
    columns = {row.group(1): int(row.group(2)) for row in rows}
    voco, control, llava = (entry.model.config for entry in entries)
    # VoCo keeps T x k columns per clip; LLaVA every patch of every frame and the newline after each frame.
    assert columns[METHODS[0]] == columns[METHODS[1]] == NUM_FRAMES * voco.num_voco_tokens
    assert columns[METHODS[2]] == NUM_FRAMES * (llava.image_seq_length + 1)
    assert entries[0].kv_bytes < entries[2].kv_bytes
    for entry, row in zip(entries, rows, strict=True):
        for index, kind in enumerate(VIDEO_QUESTIONS):
            right, asked = entry.scores[kind]
            assert asked == 4 and row.group(4 + 2 * index) == f"{right / asked:.3f}"  # one question per held-out clip
    assert chance == ["| chance | | | 0.250 | 0.250 | 0.333 |"]
    table = (folder / "demo.md").read_text()
    assert table.strip().splitlines() == [line for line in lines if line.startswith("|")]
    assert (folder / "demo.png").stat().st_size > 0
    match = ACCURACY_LINE.fullmatch(lines[-1])
    assert match and [float(value) for value in match.groups()] == [
        round(entries[0].kind_accuracy(kind)[0], 3) for kind in VIDEO_QUESTIONS
    ]


def test_the_control_is_order_blind_and_voco_video_is_not(tiny_run):
    """The three trained models: VoCo video with compact positions (the saved one), the control with restart
    positions, LLaVA with the frames as images; reversing a clip leaves the control's answer logits unchanged (to
    float rounding: the same keys at the same positions, summed in another order) and changes VoCo video's."""
    entries, _, folder = tiny_run
    voco, control, llava = entries
    assert voco.model.config.video_positions == "compact" and control.model.config.video_positions == "restart"
    assert isinstance(llava.model, LlavaForConditionalGeneration)
    assert AutoModelForImageTextToText.from_pretrained(folder).config.video_positions == "compact"
    clip = draw_clip("red", "square", shape_positions("right", 2, 5, NUM_FRAMES, 2), (230, 230, 230), 32, 12)
    question = "<video>\nWhich way does the shape move?"
    logits = {}
    for entry in (voco, control):
        for order, video in (("forward", clip), ("reversed", clip[::-1])):
            inputs = entry.processor(text=question, videos=[video], return_tensors="pt")
            with torch.no_grad():
                logits[entry.method, order] = entry.model(**inputs).logits[0, -1]
    torch.testing.assert_close(logits[control.method, "forward"], logits[control.method, "reversed"])
    assert (logits[voco.method, "forward"] - logits[voco.method, "reversed"]).abs().max() > 1e-3


# The shipped demo's held-out direction accuracy of VoCo-LLaMA video (seed 0), as docs/demo.md reports it, and how far
# below it a run may land: set from the seeds measured there (see MARGIN's comment).
DOCUMENTED_DIRECTION = 1.0
# Seeds 0, 1 and 2 all answered 1.000 (no spread to go by): three binomial standard errors of a 200-question score
# at 0.95, 3 * sqrt(0.95 * 0.05 / 200) = 0.046, rounded up.
MARGIN = 0.05
# The targets docs/demo.md#the-video-demo states (issue #21): VoCo video's direction, and colour and shape for every
# model. The control's cap is exact: it answers both clips of a reversal pair alike, so it is right on at most half.
DIRECTION_TARGET, ATTRIBUTE_TARGET, CONTROL_CAP = 0.85, 0.9, 0.5


@pytest.mark.slow(minutes=10)
def test_the_full_video_demo_reaches_its_documented_accuracy(capsys):
    """`vtc demo --video` as shipped: VoCo video's direction accuracy as documented and above its target, the control
    order-blind (the held-out clips come in reversal pairs, so it can be right on at most half of them), colour and
    shape at their targets for every model."""
    main(["demo", "--video"])
    lines = capsys.readouterr().out.strip().splitlines()
    direction = float(ACCURACY_LINE.fullmatch(lines[-1]).group(1))
    assert direction >= DOCUMENTED_DIRECTION - MARGIN, (direction, DOCUMENTED_DIRECTION, MARGIN)
    assert direction >= DIRECTION_TARGET, direction
    rows = {match.group(1): match for match in map(ROW.fullmatch, lines) if match}
    assert float(rows[METHODS[1]].group(4)) <= CONTROL_CAP, rows[METHODS[1]].group(0)
    for method in METHODS:
        colour, shape = float(rows[method].group(6)), float(rows[method].group(8))
        assert colour >= ATTRIBUTE_TARGET and shape >= ATTRIBUTE_TARGET, rows[method].group(0)
    assert len(rows) == 3 and NUM_TEST == 200
