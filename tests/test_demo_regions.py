"""`vtc demo --regions`: TokenPacker-HD with Osprey's region extractor asked about one shape of a scene by its mask,
against the same model given an empty mask."""

from __future__ import annotations

import contextlib
import io
import math
import re

import pytest

from visual_token_compression.tools import demo_regions
from visual_token_compression.tools.cli import main
from visual_token_compression.tools.demo_regions import NUM_TEST

LAST_LINE = re.compile(r"accuracy: (\d\.\d{3}) \(without masks: (\d\.\d{3}), chance: (\d\.\d{3})\)")
# The shipped region demo's held-out accuracy with masks (seed 0), as docs/demo.md reports it, and how far below it a
# run may land. Measured over seeds 0, 1, 2 (scenes, init and batch order all change): 0.892, 0.892, 0.908, mean
# 0.897, standard deviation 0.009; the 120-question score's own standard error is 0.028 at 0.892. The margin is
# about one and a half of those: a run below 0.852 (the target is 0.85) is not noise.
DOCUMENTED_ACCURACY = 0.892
MARGIN = 0.04


def test_region_demo_runs_end_to_end_and_saves_a_region_model(tmp_path, monkeypatch):
    """On 48 scenes (12 held out) and a tenth of the steps: the region stage through `vtc train --regions`, the
    held-out questions through the pipeline with their masks and with empty ones, the table, the last line, and a
    saved region model."""
    from transformers import AutoProcessor

    monkeypatch.setattr(demo_regions, "NUM_TRAIN", 48)
    monkeypatch.setattr(demo_regions, "NUM_TEST", 12)
    folder = tmp_path / "model"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        main(["demo", "--regions", "--steps-scale", "0.1", "--save", str(folder)])
    lines = printed.getvalue().strip().splitlines()
    text = "\n".join(lines)
    assert "== stage 3: everything but the tower, region questions, 3 steps ==" in text  # 10 epochs of 48 / 16
    rows = [line for line in lines if line.startswith("| image + question")]
    assert [row.split(" | ")[0] for row in rows] == ["| image + question with its mask"] + [
        "| image + question with an empty mask"
    ]
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    accuracy, without, chance = map(float, match.groups())
    assert rows[0].split(" | ")[1].startswith(f"{accuracy:.3f} ± ")
    assert rows[1].split(" | ")[1].startswith(f"{without:.3f} ± ") and chance == pytest.approx(1 / 3, abs=5e-4)
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.mask_token_id is not None and processor.is_hd
    assert (folder / "demo.md").read_text().count("| image + question") == 2


@pytest.mark.slow(minutes=3)
def test_the_full_region_demo_reaches_its_documented_accuracy(capsys):
    """`vtc demo --regions` as shipped must keep the accuracy docs/demo.md reports with masks, and stay near chance
    with an empty mask (the image alone never says which of its three shapes a question means)."""
    main(["demo", "--regions"])
    match = LAST_LINE.fullmatch(capsys.readouterr().out.strip().splitlines()[-1])
    accuracy, without, chance = map(float, match.groups())
    # DOCUMENTED_ACCURACY (seed 0) and MARGIN: see their comments at the top of this file.
    assert accuracy >= DOCUMENTED_ACCURACY - MARGIN, (accuracy, DOCUMENTED_ACCURACY, MARGIN)
    # Without its mask, no better than chance by more than three standard errors of a 120-question score.
    assert without <= chance + 3 * math.sqrt(chance * (1 - chance) / NUM_TEST), (without, chance)
