"""transformers 4.57: registration, AutoModelForVision2Seq, pipeline, generate, and checkpoints that cross
between 4.57 and 5.x in both directions with identical logits (the other version runs in `.venv`)."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

from tests.helpers import (
    LOADER,
    QUESTION,
    VARIANT_IDS,
    VARIANTS,
    chat,
    run_without_package,
    sample_image,
    save_variant,
)
from visual_token_compression import MODEL_TYPES
from visual_token_compression.tools.tiny import build_tiny

REPO_ROOT = Path(__file__).resolve().parents[2]
V5_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"

# Runs in the other venv: build or load every variant, write inputs and logits next to each folder.
WRITE = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
from visual_token_compression.tools.tiny import build_tiny
from tests.helpers import VARIANTS, chat, sample_image
root = Path(sys.argv[1])
for index, (name, kwargs) in enumerate(VARIANTS):
    model, processor = build_tiny(name, **kwargs)
    folder = root / str(index)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    inputs = processor(images=sample_image(), text=chat(processor, "What is it?"), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    save_file({**{k: v.contiguous() for k, v in inputs.items()}, "logits": logits}, folder / "expected.safetensors")
"""
READ = """
import sys, torch
from pathlib import Path
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
import visual_token_compression
from tests.helpers import chat, sample_image
for folder in sorted(Path(sys.argv[1]).iterdir()):
    expected = load_file(folder / "expected.safetensors")
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    inputs = processor(images=sample_image(), text=chat(processor, "What is it?"), return_tensors="pt")
    for key, value in inputs.items():
        assert torch.equal(value, expected[key]), (folder, key)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected["logits"], atol=0, rtol=0)
print("ok", len(list(Path(sys.argv[1]).iterdir())))
"""


def run_v5(script: str, folder: Path) -> str:
    if not V5_PYTHON.exists():
        raise FileNotFoundError(f"{V5_PYTHON} is missing: `make install` creates the transformers 5.x venv.")
    result = subprocess.run(
        [str(V5_PYTHON), "-c", textwrap.dedent(script), str(folder)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    version = subprocess.run(
        [str(V5_PYTHON), "-c", "import transformers; print(transformers.__version__)"], capture_output=True, text=True
    ).stdout
    assert version.startswith("5."), f"{V5_PYTHON} runs transformers {version}, not 5.x"
    return result.stdout


def test_this_suite_runs_on_457():
    assert transformers.__version__.startswith("4.57"), transformers.__version__


@pytest.mark.parametrize("name", sorted(MODEL_TYPES))
def test_registered_with_every_auto_class(name):
    entry = MODEL_TYPES[name]
    config = entry.config_class
    assert transformers.AutoConfig.for_model(name).__class__ is config
    for auto in (transformers.AutoModelForVision2Seq, transformers.AutoModelForImageTextToText):
        assert auto._model_mapping[config] is entry.for_generation_class
    assert transformers.AutoModel._model_mapping[config] is entry.model_class
    assert PROCESSOR_MAPPING[config] is entry.processor_class


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def saved(request, tmp_path_factory):
    return save_variant(request.param, tmp_path_factory)[1:]


def test_vision2seq_from_pretrained_and_generate(saved):
    model, processor, folder = saved
    with pytest.warns(FutureWarning):
        loaded = transformers.AutoModelForVision2Seq.from_pretrained(folder).eval()
    inputs = processor(images=sample_image(), text=chat(processor, "What is it?"), return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)
        greedy = dict(max_new_tokens=4, do_sample=False)
        torch.testing.assert_close(loaded.generate(**inputs, **greedy), model.generate(**inputs, **greedy))


def test_pipeline_answers_a_chat_message(saved):
    model, processor, _ = saved
    generator = transformers.pipeline("image-text-to-text", model=model, processor=processor)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": sample_image()}, {"type": "text", "text": "Hi?"}]}
    ]
    answer = generator(text=messages, max_new_tokens=3, generate_kwargs={"do_sample": False})
    assert answer[0]["generated_text"][-1]["role"] == "assistant"


def test_checkpoints_written_by_5x_load_here_with_identical_logits(tmp_path):
    run_v5(WRITE, tmp_path)
    for index, _ in enumerate(VARIANTS):
        folder = tmp_path / str(index)
        expected = load_file(folder / "expected.safetensors")
        processor = transformers.AutoProcessor.from_pretrained(folder)
        model = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
        inputs = processor(images=sample_image(), text=chat(processor, "What is it?"), return_tensors="pt")
        for key, value in inputs.items():
            assert torch.equal(value, expected[key]), (VARIANTS[index], key)
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, expected["logits"], atol=0, rtol=0)


def test_checkpoints_written_here_load_on_5x_with_identical_logits(tmp_path):
    for index, (name, kwargs) in enumerate(VARIANTS):
        model, processor = build_tiny(name, **kwargs)
        folder = tmp_path / str(index)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        inputs = processor(images=sample_image(), text=chat(processor, "What is it?"), return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        save_file(
            {**{k: v.contiguous() for k, v in inputs.items()}, "logits": logits}, folder / "expected.safetensors"
        )
    assert run_v5(READ, tmp_path).strip() == f"ok {len(VARIANTS)}"


# Runs in the 5.x venv: a Hub folder (`save_for_hub`, what `vtc push --local-dir` writes) of every variant.
WRITE_HUB = """
import json, sys
from pathlib import Path
from visual_token_compression.tools.hub import save_for_hub
from visual_token_compression.tools.tiny import build_tiny
from tests.helpers import VARIANTS, variant_id
root, folders = Path(sys.argv[1]), {}
for model_type, kwargs in VARIANTS:
    name = variant_id((model_type, kwargs))
    model, processor = build_tiny(model_type, **kwargs)
    folder = root / "hub" / f"checkpoint_{name.replace('-', '_')}"
    save_for_hub(model, processor, folder, repo_id=str(folder), base_models=["org/original"])
    folders[name] = str(folder)
print(json.dumps(folders))
"""


def test_hub_folders_written_by_5x_load_here_as_remote_code_without_the_package(tmp_path):
    """The user's path: `vtc push --local-dir` on 5.x, then AutoProcessor and the model on 4.57 with
    `trust_remote_code` and no visual_token_compression installed (test_hub's loader, which blocks the package)."""
    folders = json.loads(run_v5(WRITE_HUB, tmp_path).strip().splitlines()[-1])
    work = tmp_path / "remote"
    work.mkdir()
    sample_image(size=(70, 40)).save(work / "image.png")
    reports, _ = run_without_package(LOADER, work, folders)
    assert sorted(reports) == sorted(folders)
    for name, folder in folders.items():
        assert reports[name]["package_modules"] == [], name
        # The same inputs and logits as the package itself gives on this release, from the same folder.
        processor = transformers.AutoProcessor.from_pretrained(folder)
        model = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=sample_image(size=(70, 40)), text=prompt, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        remote = load_file(work / f"{name}.safetensors")
        assert torch.equal(remote["input_ids"], inputs["input_ids"]), name
        torch.testing.assert_close(remote["logits"], logits, atol=0, rtol=0)
