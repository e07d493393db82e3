"""The main job end to end at a fraction of its steps: data, stage 1, stage 2, pipeline answers, scored line."""

from __future__ import annotations

import re

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from visual_token_compression.cli import main


def test_demo_trains_both_stages_and_ends_with_the_accuracy_line(tmp_path, capsys):
    main(["demo", "--steps-scale", "0.02", "--save", str(tmp_path / "model")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "== stage 1: compressor only" in "\n".join(lines)
    assert "== stage 2: compressor + LLM" in "\n".join(lines)
    match = re.fullmatch(r"accuracy: (\d\.\d{3}) \(chance: (\d\.\d{3})\)", lines[-1])
    assert match, lines[-1]
    assert 0.0 <= float(match.group(1)) <= 1.0 and 0.3 < float(match.group(2)) < 0.5
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    assert AutoProcessor.from_pretrained(tmp_path / "model").image_token_id == model.config.image_token_id
    assert not list((tmp_path / "model").glob("*.bin")), "nothing pickled in the saved folder"


def test_demo_refuses_to_overwrite_a_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["demo", "--save", str(tmp_path)])
    assert (tmp_path / "keep.txt").read_text() == "mine"
