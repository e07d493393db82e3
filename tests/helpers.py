"""What the test modules share: the variants every contract suite runs over, sample inputs, saved tiny models, and
a loader that runs saved folders in an interpreter where this package cannot be imported.

Test modules import from here, never from each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from visual_token_compression import MODEL_TYPES
from visual_token_compression.tools.tiny import build_tiny

MODEL_TYPE_NAMES = sorted(MODEL_TYPES)
# Every model type with its defaults, plus TokenPacker-HD (tokenpacker with tiling switched on).
VARIANTS = [(name, {}) for name in MODEL_TYPE_NAMES] + [("tokenpacker", {"patch_num": 9})]


def variant_id(variant: tuple[str, dict]) -> str:
    """`tokenpacker`, `tokenpacker-9` (TokenPacker-HD), ...: the pytest id of a variant."""
    return "-".join([variant[0], *map(str, variant[1].values())])


VARIANT_IDS = [variant_id(variant) for variant in VARIANTS]
QUESTION = "What is in the picture?"


def sample_image(seed: int = 0, size=(40, 30)) -> Image.Image:
    """Random pixels of (width, height) `size`; the default is wider than tall, so TokenPacker-HD tiles it."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def chat(processor, question: str) -> str:
    """The processor's chat template for one user turn of an image and `question`, ready for generation."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def save_variant(variant: tuple[str, dict], tmp_path_factory) -> tuple:
    """A tiny model of a variant, saved with its processor: (model_type, model, processor, folder)."""
    model_type, config_kwargs = variant
    model, processor = build_tiny(model_type, **config_kwargs)
    folder = tmp_path_factory.mktemp(model_type)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model_type, model, processor, folder


# The subprocess has no access to visual_token_compression: the editable install's finder sits in site-packages
# (a .pth hook), so a meta-path blocker in front of it makes every import of the package fail. It loads every
# variant's folder in turn (one interpreter start for all), with each Auto class, the pipeline and the card snippet.
BLOCKER = """
import json, sys

class BlockPackage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "visual_token_compression":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, BlockPackage())
try:
    import visual_token_compression  # noqa: F401
    raise SystemExit("visual_token_compression is importable; the test would prove nothing")
except ImportError:
    pass
"""
LOADER = (
    BLOCKER
    + """
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

work, reports = sys.argv[1], {}
image = Image.open(work + "/image.png")
messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
for name, folder in json.loads(sys.argv[2]).items():
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = base(**inputs).last_hidden_state
    save_file({"logits": logits, "hidden": hidden, "input_ids": inputs["input_ids"]}, f"{work}/{name}.safetensors")
    generator = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    answer = generator(text=messages, max_new_tokens=3, generate_kwargs={"do_sample": False})

    readme = open(folder + "/README.md", encoding="utf-8").read()
    exec(readme.split("```python\\n")[1].split("\\n```")[0], {})  # the card's usage snippet, as a user runs it

    reports[name] = {
        "classes": {role: type(obj).__module__ + "." + type(obj).__name__ for role, obj in [
            ("config", config), ("processor", processor), ("image_processor", processor.image_processor),
            ("model", model), ("base", base), ("pipeline_model", generator.model)]},
        "pipeline": answer[0]["generated_text"][-1]["content"],
        "package_modules": sorted(name for name in sys.modules if name.startswith("visual_token_compression")),
    }
print(json.dumps(reports))
""".replace("QUESTION", repr(QUESTION))
)


def run_without_package(script: str, work: Path, folders: dict[str, str]) -> tuple[dict, str]:
    """Runs `script` (LOADER or another loader behind BLOCKER) over `folders` in a fresh interpreter of this venv,
    with an empty Hugging Face home and offline; returns the reports it prints on its last line, and its stderr."""
    (work / "load.py").write_text(script)
    env = {**os.environ, "HF_HOME": str(work / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_MODULES_CACHE", None)
    # -I: no current directory or PYTHONPATH on sys.path, so the repository checkout is not importable either.
    result = subprocess.run(
        [sys.executable, "-I", str(work / "load.py"), str(work), json.dumps(folders)],
        capture_output=True, text=True, cwd=work, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


# Our compressor key prefix -> the original's, from tokenpacker.md §3.1, quecc.md §2.2/§4, voco_llama.md §9.4.
ORIGINAL_COMPRESSOR_NAMES = {
    "tokenpacker": {
        "query_proj.": "q_proj_1.",
        "key_mlp.fc1.": "k_proj_1.0.",
        "key_mlp.fc2.": "k_proj_1.2.",
        "value_mlp.fc1.": "v_proj_1.0.",
        "value_mlp.fc2.": "v_proj_1.2.",
        "query_norm.": "ln_q_1.",
        "key_norm.": "ln_k_1.",
        "value_norm.": "ln_v_1.",
        "attn.out_proj.": "clip_attn.out_proj.",
        "attn.in_proj_": "clip_attn.in_proj_",
        "out_mlp.fc1.": "mlp.0.",
        "out_mlp.fc2.": "mlp.2.",
    },
    "quecc": {
        "query_mlp.fc1.": "0.q_proj.0.",
        "query_mlp.fc2.": "0.q_proj.2.",
        "query_norm.": "0.q_proj.3.",
        "key_mlp.fc1.": "0.k_proj.0.",
        "key_mlp.fc2.": "0.k_proj.2.",
        "key_norm.": "0.k_proj.3.",
        "value_mlp.fc1.": "0.v_proj.0.",
        "value_mlp.fc2.": "0.v_proj.2.",
        "value_norm.": "0.v_proj.3.",
        "query_downsample.": "0.q_downsample.",
        "text_proj.": "0.text_projection.0.",
        "text_norm.": "0.text_projection.1.",
        "attn.out_proj.": "0.clip_attn.out_proj.",
        "attn.in_proj_": "0.clip_attn.in_proj_",
        "out_mlp.fc1.": "1.",
        "out_mlp.fc2.": "3.",
    },
    "voco_llama": {"fc1.": "0.", "fc2.": "2."},
}
