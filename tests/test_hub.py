"""Hub folders: remote code that loads without this package, no pickles, and the rendered model card."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import pipeline
from transformers.dynamic_module_utils import get_relative_import_files

from tests.helpers import BLOCKER, LOADER, QUESTION, VARIANTS, run_without_package, sample_image, variant_id
from visual_token_compression import MODEL_TYPES
from visual_token_compression.remote_code import ENTRY_MODULE, bundle_sources
from visual_token_compression.tools.hub import (
    EXAMPLE_MESSAGES,
    push_to_hub,
    render_model_card,
    save_for_hub,
    visual_token_budget,
)
from visual_token_compression.tools.tiny import build_tiny

# Wider than tall, so TokenPacker-HD cuts it into several tiles.
HUB_IMAGE_SIZE = (70, 40)
ALLOWED_SUFFIXES = {".safetensors", ".json", ".py", ".jinja", ".md", ".txt"}
PROVENANCE = {"source": "https://github.com/example/original", "parity": "max |logits diff| 2e-6"}


def messages_for(image=None) -> list[dict]:
    image_item = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [{"role": "user", "content": [image_item, {"type": "text", "text": QUESTION}]}]


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory) -> dict[str, tuple]:
    """Variant id -> (model, processor, folder) of a tiny model of each variant written by `save_for_hub`."""
    folders = {}
    for model_type, config_kwargs in VARIANTS:
        model, processor = build_tiny(model_type, **config_kwargs)
        name = variant_id((model_type, config_kwargs))
        # A distinct folder name each: 4.57 names a local checkpoint's dynamic module after its folder alone.
        folder = tmp_path_factory.mktemp(name) / f"checkpoint_{name.replace('-', '_')}"
        save_for_hub(
            model, processor, folder, repo_id=str(folder), base_models=["org/original"], provenance=PROVENANCE
        )
        folders[name] = model, processor, folder
    return folders


@pytest.fixture(params=[variant_id(variant) for variant in VARIANTS])
def hub_folder(request, hub_folders):
    return hub_folders[request.param]


@pytest.fixture(scope="module")
def remote_reports(hub_folders, tmp_path_factory) -> tuple[Path, dict, str]:
    """Runs LOADER over every variant's folder in a fresh interpreter; (its output folder, its reports, stderr)."""
    work = tmp_path_factory.mktemp("remote")
    sample_image(size=HUB_IMAGE_SIZE).save(work / "image.png")
    folders = {name: str(folder) for name, (_, _, folder) in hub_folders.items()}
    return work, *run_without_package(LOADER, work, folders)


@pytest.mark.parametrize("name", [variant_id(variant) for variant in VARIANTS])
def test_remote_code_loads_without_the_package(name, hub_folders, remote_reports):
    model, processor, _ = hub_folders[name]
    work, reports, _ = remote_reports
    report = reports[name]
    image = sample_image(size=HUB_IMAGE_SIZE)
    inputs = processor(
        images=image,
        text=processor.apply_chat_template(messages_for(), add_generation_prompt=True, tokenize=False),
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.model(**inputs).last_hidden_state
    expected_answer = pipeline("image-text-to-text", model=model, processor=processor)(
        text=messages_for(image), max_new_tokens=3, generate_kwargs={"do_sample": False}
    )[0]["generated_text"][-1]["content"]

    assert report["package_modules"] == []
    expected_classes = {
        "config": type(model.config),
        "processor": type(processor),
        "model": type(model),
        "base": MODEL_TYPES[model.config.model_type].model_class,
        "pipeline_model": type(model),
        "image_processor": type(processor.image_processor),
    }
    for role, cls in expected_classes.items():
        loaded = report["classes"][role]
        assert loaded.endswith("." + cls.__name__), (role, loaded)
        if cls.__module__.startswith("visual_token_compression"):
            assert loaded.startswith("transformers_modules."), (role, loaded)  # the bundled copy, not ours
    remote = load_file(work / f"{name}.safetensors")
    torch.testing.assert_close(remote["input_ids"], inputs["input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(remote["logits"], logits)
    torch.testing.assert_close(remote["hidden"], hidden)
    assert report["pipeline"] == expected_answer


def test_folder_holds_no_pickles_and_self_contained_code(hub_folder):
    model, processor, folder = hub_folder
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert {path.suffix for path in files} <= ALLOWED_SUFFIXES, sorted(path.name for path in files)
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()

    # transformers' own resolver must reach every bundled file from the entry module, and nothing outside.
    code_files = {path.name for path in folder.glob("*.py")}
    reached = {Path(name).name for name in get_relative_import_files(folder / f"{ENTRY_MODULE}.py")}
    assert reached | {f"{ENTRY_MODULE}.py"} == code_files
    for path in folder.glob("*.py"):
        assert "from .." not in path.read_text() and "visual_token_compression import" not in path.read_text()

    entry_tree = ast.parse((folder / f"{ENTRY_MODULE}.py").read_text())
    entry_names = {alias.name for node in entry_tree.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert {"AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoProcessor"} <= set(auto_map)
    processor_config = json.loads((folder / "processor_config.json").read_text())
    maps = [auto_map, processor_config["auto_map"]]
    if isinstance(processor_config.get("image_processor"), dict) and "auto_map" in processor_config["image_processor"]:
        maps.append(processor_config["image_processor"]["auto_map"])
    for mapping in maps:
        for reference in mapping.values():
            module, _, class_name = reference.partition(".")
            assert module == ENTRY_MODULE and class_name in entry_names, reference


def test_remote_code_loads_without_a_deprecation_warning(remote_reports):
    """As remote code too, the processors load the way 5.x asks (their sub-processors through the Auto classes and
    the folder's `auto_map`), so transformers prints no deprecation warning for them."""
    _, _, stderr = remote_reports
    assert "is deprecated. Register the correct mapping" not in stderr, stderr


# A folder written by `model.save_pretrained` alone (no `save_for_hub`): the model's auto classes as remote code.
MODEL_LOADER = (
    BLOCKER
    + """
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForImageTextToText

work, classes = sys.argv[1], {}
for name, folder in json.loads(sys.argv[2]).items():
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**load_file(f"{work}/{name}.inputs.safetensors")).logits
    save_file({"logits": logits}, f"{work}/{name}.logits.safetensors")
    classes[name] = [type(obj).__module__ + "." + type(obj).__name__ for obj in (config, model)]
    classes[name] += sorted(name for name in sys.modules if name.startswith("visual_token_compression"))
print(json.dumps(classes))
"""
)


def test_save_pretrained_writes_the_hub_bundle(hub_folders, tmp_path):
    """Every folder a model saves is Hub-ready: `model.save_pretrained` writes the code `save_for_hub` writes and
    the model's `auto_map` (TRL's `SFTTrainer(model=folder)` needs it), and the folder loads as remote code where
    the package is not installed."""
    work, folders, expected = tmp_path / "work", {}, {}
    work.mkdir()
    for name, (model, processor, hub_folder) in hub_folders.items():
        folder = tmp_path / f"saved_{name.replace('-', '_')}"
        model.save_pretrained(folder)
        code = {path.name: path.read_text() for path in folder.glob("*.py")}
        assert code == {path.name: path.read_text() for path in hub_folder.glob("*.py")}, name
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert auto_map == json.loads((hub_folder / "config.json").read_text())["auto_map"], name
        inputs = processor(
            images=sample_image(size=HUB_IMAGE_SIZE),
            text=processor.apply_chat_template(messages_for(), add_generation_prompt=True, tokenize=False),
            return_tensors="pt",
        )
        save_file(dict(inputs), work / f"{name}.inputs.safetensors")
        with torch.no_grad():
            expected[name] = model(**inputs).logits
        folders[name] = str(folder)

    reports, _ = run_without_package(MODEL_LOADER, work, folders)
    for name, logits in expected.items():
        config_class, model_class, *package_modules = reports[name]
        assert config_class.startswith("transformers_modules.") and model_class.startswith("transformers_modules.")
        assert package_modules == [], name
        torch.testing.assert_close(load_file(work / f"{name}.logits.safetensors")["logits"], logits)


def test_processor_save_pretrained_writes_its_auto_map(tmp_path):
    """The processor's `save_pretrained` alone (it runs after the model's in `Trainer` checkpoints) writes the
    bundle and its `auto_map`s: AutoProcessor, and AutoImageProcessor for TokenPacker-HD's tiler."""
    _, processor = build_tiny("tokenpacker", patch_num=9)
    processor.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "processor_config.json").read_text())
    assert data["auto_map"]["AutoProcessor"] == f"{ENTRY_MODULE}.{type(processor).__name__}"
    assert data["image_processor"]["auto_map"]["AutoImageProcessor"] == f"{ENTRY_MODULE}.TokenPackerImageProcessor"
    assert (tmp_path / f"{ENTRY_MODULE}.py").is_file()


def test_bundle_rejects_classes_outside_the_package():
    with pytest.raises(ValueError, match="outside visual_token_compression"):
        bundle_sources([torch.nn.Linear])


def test_save_for_hub_refuses_a_non_empty_folder_and_foreign_models(tmp_path):
    model, processor = build_tiny("tokenpacker")
    (tmp_path / "training_args.bin").write_bytes(b"stale")
    with pytest.raises(FileExistsError, match="not empty"):
        save_for_hub(model, processor, tmp_path)
    foreign = SimpleNamespace(config=SimpleNamespace(model_type="llava"))
    with pytest.raises(ValueError, match="'llava' is not one of this package's"):
        save_for_hub(foreign, processor, tmp_path / "new")
    with pytest.raises(ValueError, match="either card or"):
        save_for_hub(model, processor, tmp_path / "new", card=ModelCard("x"), license="mit")


def test_model_card_metadata_and_sections(hub_folder):
    model, processor, folder = hub_folder
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-text-to-text"
    assert data["base_model"] == ["org/original"]
    assert data["license"] == "apache-2.0"
    assert {"llava", "token-compression", model.config.model_type} <= set(data["tags"])

    budget = visual_token_budget(model.config)
    text = card.text
    assert f"| tokens per image in the LLM | {budget['tokens_per_image']} |" in text
    assert f"| compression ratio | {budget['compression_ratio']} |" in text
    assert f'repo = "{folder}"' in text and "trust_remote_code=True" in text
    prompt = processor.apply_chat_template(EXAMPLE_MESSAGES, add_generation_prompt=True, tokenize=False)
    assert f"```text\n{prompt}\n```" in text
    assert "| source | https://github.com/example/original |" in text
    assert "| parity | max \\|logits diff\\| 2e-6 |" in text  # a '|' in a value must not split the table


@pytest.mark.parametrize(
    ("model_type", "config_kwargs", "tokens", "ratio"),
    [
        # Tiny towers: 32 px images, patch 4 -> 64 patches per view.
        ("tokenpacker", {}, "16", "4x (64 -> 16)"),
        ("tokenpacker", {"scale_factor": 4}, "4", "16x (64 -> 4)"),
        ("tokenpacker", {"patch_num": 9}, "16 per view plus one separator; 17 to 170 per image", "4x per view"),
        ("voco_llama", {"num_voco_tokens": 2}, "64 image tokens enter the LLM; 2 VoCo tokens", "32x (64 -> 2 cached"),
        ("setok", {"max_image_tokens": 8}, "dynamic, at most 8", "at least 8x (64 -> <= 8)"),
        ("quecc", {"kernel_size": 2, "stride": 2}, "16", "4x (64 -> 16)"),
    ],
)
def test_token_budget_comes_from_the_config(model_type, config_kwargs, tokens, ratio):
    config = build_tiny(model_type, **config_kwargs)[0].config
    budget = visual_token_budget(config)
    assert budget["tokens_per_image"].startswith(tokens)
    assert budget["compression_ratio"].startswith(ratio)


def test_card_without_provenance_says_so():
    model, processor = build_tiny("tokenpacker")
    card = render_model_card(model, processor, repo_id="org/tiny-tokenpacker")
    assert "Not converted from an original checkpoint" in card.text
    assert "base_model" not in card.data.to_dict()
    assert 'repo = "org/tiny-tokenpacker"' in card.text


class RecordingApi:
    """Stands in for HfApi: records the calls and what the uploaded folder held at upload time."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(path.name for path in Path(folder_path).iterdir())
        readme = (Path(folder_path) / "README.md").read_text()
        self.calls.append(("upload_folder", repo_id, {**kwargs, "files": files, "readme": readme}))
        return "commit-info"


def test_push_to_hub_uploads_a_save_for_hub_folder():
    model, processor = build_tiny("tokenpacker")
    api = RecordingApi()
    result = push_to_hub(model, processor, "org/tiny", private=True, api=api, provenance={"source": "unit test"})
    assert result == "commit-info"
    (create, repo_id, create_kwargs), (upload, upload_repo, upload_kwargs) = api.calls
    assert (create, repo_id, upload, upload_repo) == ("create_repo", "org/tiny", "upload_folder", "org/tiny")
    assert create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert {"model.safetensors", "config.json", "processor_config.json", f"{ENTRY_MODULE}.py", "README.md"} <= set(
        upload_kwargs["files"]
    )
    assert 'repo = "org/tiny"' in upload_kwargs["readme"] and "| source | unit test |" in upload_kwargs["readme"]
