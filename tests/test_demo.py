"""The main job end to end at a fraction of its steps, for every method: data, stage 1, stage 2, pipeline answers,
the scored last line, and a saved folder that loads in a fresh process."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import VARIANTS, variant_id
from visual_token_compression.tools.cli import main
from visual_token_compression.tools.conversion.converters import LLAVA_PROJECTORS
from visual_token_compression.tools.demo import NUM_TEST, method_label
from visual_token_compression.tools.training.synthetic import QUESTIONS

ACCURACY_LINE = re.compile(r"accuracy: (\d\.\d{3}) \(chance: (\d\.\d{3})\)")
# The shipped demo's held-out TokenPacker accuracy (seed 0), as docs/demo.md reports it, and how far below it a run
# may land. Measured over seeds 0, 1, 2 (data, init and batch order all change): 0.917, 0.875, 0.925, mean 0.906,
# standard deviation 0.027. The margin is about twice that: a run below 0.857 is not seed noise. (The 120-question
# score's own standard error is 0.025 at 0.917.)
DOCUMENTED_ACCURACY = 0.917
MARGIN = 0.06


def kib(text: str) -> float:
    """A table's byte count (`benchmarks.report.human_bytes`) in KiB."""
    value, unit = text.removesuffix(" |").split()
    return float(value) * {"B": 2**-10, "KiB": 1, "MiB": 2**10, "GiB": 2**20}[unit]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """Each variant's demo at 1% of its steps, run here and saved: (variant id, model type, folder, the lines it
    printed, its table label). Every test that reads a run gets it from this fixture."""
    runs = []
    for model_type, config_kwargs in VARIANTS:
        name = variant_id((model_type, config_kwargs))
        folder = tmp_path_factory.mktemp(name) / "model"
        argv = ["demo", "--model-type", model_type, "--steps-scale", "0.01", "--save", str(folder)]
        argv += ["--speed-preset", "tiny"]  # the realistic-shape columns at the bench's tiny widths: seconds
        argv += [arg for field, value in config_kwargs.items() for arg in ("--config", f"{field}={value}")]
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            main(argv)
        lines = printed.getvalue().strip().splitlines()
        runs.append((name, model_type, folder, lines, method_label(model_type, config_kwargs)))
    return runs


def test_demo_trains_both_models_and_ends_with_the_table_and_accuracy_line(demo_runs):
    for name, model_type, folder, lines, label in demo_runs:
        text = "\n".join(lines)
        assert "== llava baseline, stage 2: projector + LLM" in text, name
        if LLAVA_PROJECTORS[model_type]:
            # VisionZip's compressor is LLaVA's projector: the trained baseline converted as is, then projector-tuned.
            assert f"== {model_type} from the llava baseline: projector only" in text, name
            expected = [f"| {label} (llava, no training)", f"| {label} (projector tuned)"]
        else:
            assert "== stage 1: compressor only" in text, name
            assert "== stage 2: compressor + LLM" in text, name
            expected = [f"| {label}"]
        rows = [line.split(" | ") for line in lines if line.startswith("| ") and not line.startswith("| method")]
        assert [row[0] for row in rows] == ["| llava (baseline)", *expected], (name, rows)
        assert rows[0][1] == "64", rows  # every patch of the 8x8 grid
        # The same settings at the speed preset's shapes: LLaVA is the speed-up's reference, and no method caches more
        # than LLaVA after the prefill; TokenPacker packs 2x2 patches (a quarter of the positions, a smaller cache).
        # (SeTok at the tiny shapes keeps max_image_tokens = all 64 positions; VoCo-LLaMA prefills every patch and
        # caches only its VoCo tokens.)
        assert rows[0][7] == "1.00x", rows[0]
        for row in rows[1:]:
            assert float(row[7].removesuffix("x")) > 0 and kib(row[8]) <= kib(rows[0][8]), (name, row)
            assert int(row[6]) <= int(rows[0][6]), (name, row)
        if name == "tokenpacker":
            assert 4 * int(rows[1][6]) == int(rows[0][6]) and kib(rows[1][8]) < kib(rows[0][8]), rows
        table = (folder / "demo.md").read_text()
        assert (folder / "demo.png").stat().st_size > 0 and table.count("\n") == 2 + len(rows)
        match = ACCURACY_LINE.fullmatch(lines[-1])
        assert match, (name, lines[-1])
        accuracy, chance = float(match.group(1)), float(match.group(2))
        # The last line is the compressed model's row of the table (the last row), accuracy and chance alike...
        assert rows[-1][2].startswith(f"{accuracy:.3f} ± ") and rows[-1][3] == f"{chance:.3f}", (name, rows[-1])
        # ...and a share of the NUM_TEST held-out questions (rounded to 3 decimals: at most 5e-4 * NUM_TEST off).
        assert abs(accuracy * NUM_TEST - round(accuracy * NUM_TEST)) <= 5e-4 * NUM_TEST, (name, accuracy)
        # Chance: the mean over the questions asked of 1 / (the answers each allows).
        options = [len(answers) for _, answers in QUESTIONS.values()]
        assert 1 / max(options) < chance < 1 / min(options), (name, chance)


@pytest.mark.slow(minutes=7)
def test_the_full_demo_reaches_its_documented_accuracy(capsys):
    """`vtc demo` as shipped (TokenPacker, every step) must keep the accuracy docs/demo.md reports."""
    main(["demo"])
    match = ACCURACY_LINE.fullmatch(capsys.readouterr().out.strip().splitlines()[-1])
    accuracy, chance = float(match.group(1)), float(match.group(2))
    # DOCUMENTED_ACCURACY (seed 0) and MARGIN: see their comments at the top of this file.
    assert accuracy >= DOCUMENTED_ACCURACY - MARGIN, (accuracy, DOCUMENTED_ACCURACY, MARGIN)
    assert accuracy > chance + 2 * math.sqrt(chance * (1 - chance) / NUM_TEST), (accuracy, chance)


def test_saved_demo_models_load_in_a_fresh_process(demo_runs):
    folders = [str(folder) for _, _, folder, _, _ in demo_runs]
    for folder in folders:
        assert not [path for path in Path(folder).iterdir() if path.suffix in (".bin", ".pt")], "nothing pickled"
    script = textwrap.dedent(
        f"""
        import json
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
        import visual_token_compression  # registers the model types

        replies = []
        for folder in {folders!r}:
            model = AutoModelForImageTextToText.from_pretrained(folder)
            AutoProcessor.from_pretrained(folder)
            generator = pipeline("image-text-to-text", model=folder)
            image = Image.new("RGB", (32, 32), (220, 40, 40))
            content = [{{"type": "image", "image": image}}, {{"type": "text", "text": "What colour is the shape?"}}]
            answer = generator(text=[{{"role": "user", "content": content}}], max_new_tokens=2)
            replies.append([model.config.model_type, answer[0]["generated_text"][-1]["role"]])
        print(json.dumps(replies))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    replies = json.loads(result.stdout.strip().splitlines()[-1])
    assert replies == [[model_type, "assistant"] for model_type, _ in VARIANTS]


def test_demo_refuses_to_overwrite_a_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["demo", "--save", str(tmp_path)])
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_refuses_an_unknown_speed_preset_before_training(tmp_path):
    with pytest.raises(ValueError, match="no bench preset 'huge'; choose one of tiny, small, llava-7b"):
        main(["demo", "--speed-preset", "huge", "--save", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("demo", ["--regions", "--video"])
@pytest.mark.parametrize(
    "flags",
    [["--model-type", "quecc"], ["--config", "scale_factor=4"], ["--llm", "smollm2"], ["--speed-preset", "tiny"]],
)
def test_the_region_and_video_demos_refuse_the_image_demos_flags(demo, flags):
    """They train their own models: a flag of the image demo would be silently ignored."""
    with pytest.raises(ValueError, match=f"{flags[0]} does not apply to it"):
        main(["demo", demo, *flags])
