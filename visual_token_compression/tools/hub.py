"""Hub-ready folders: safetensors, configs whose `auto_map` points to bundled code, and a model card.

A folder written by `save_for_hub` loads with `trust_remote_code=True` in an environment without this package
(`AutoModel`, `AutoModelForImageTextToText`, `AutoProcessor` and the image-text-to-text pipeline). Nothing in it
is pickled: weights are safetensors, everything else is JSON, Python, Jinja or Markdown.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

from .. import __version__
from ..registry import MODEL_TYPES
from ..remote_code import write_remote_code

# Shipped inside the package (not at the repo root as DESIGN.md sketches) so that wheel installs have it.
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "compressed_vlm.md.jinja"
# Pickle-based formats that `torch.load` would execute; a Hub folder from this package never holds one.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
TAGS = ["llava", "token-compression", "visual-token-compression"]
# The user turn the card renders to show the chat format.
EXAMPLE_MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}
]

SNIPPET = """\
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

repo = "{repo_id}"
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True, dtype="auto")

image = Image.new("RGB", (640, 480), "white")  # or Image.open("photo.jpg")
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "Describe the image."}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))"""


def model_type_entry(model):
    """The `auto.ModelType` of a model of this package, or a clear error for any other model."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of this package's: {sorted(MODEL_TYPES)}.")
    return MODEL_TYPES[model_type]


def visual_token_budget(config) -> dict[str, str]:
    """Tokens per image in the LLM and the compression ratio, as the card states them: the config's own account."""
    return config.visual_token_budget()


def _table_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", "<br>")


def render_model_card(
    model,
    processor,
    *,
    repo_id: str | None = None,
    base_models: Sequence[str] = (),
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    provenance: Mapping[str, object] | None = None,
    template_path: str | Path = DEFAULT_TEMPLATE,
) -> ModelCard:
    """The model card of a checkpoint, rendered from a Jinja template with `huggingface_hub.ModelCard`.

    Args:
        repo_id: the Hub repository (or local folder) the usage snippet loads.
        base_models: the checkpoints it was built from (original weights, vision tower, LLM): `base_model` metadata.
        license: a Hub license id; a converted checkpoint inherits its base models' licenses.
        datasets: training data, for the metadata.
        provenance: how the checkpoint was made (source repository and commit, conversion script, parity
            numbers, ...): rendered as a table. `None` states that it was not converted.
        template_path: the Jinja template; `visual_token_compression/model_cards/compressed_vlm.md.jinja` by default.
    """
    template_path = Path(template_path)
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template {template_path} not found; pass template_path=.")
    entry = model_type_entry(model)
    config = model.config
    repo_id = repo_id or f"your-name/{config.model_type}"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        base_model=list(base_models) or None,
        license=license,
        datasets=list(datasets) or None,
        tags=[*TAGS, config.model_type],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=repo_id.rstrip("/").split("/")[-1],
        repo_id=repo_id,
        model_type=config.model_type,
        architecture=type(model).__name__,
        summary=inspect.getdoc(entry.config_class).split("\n")[0],
        vision_model_type=config.vision_config.model_type,
        image_size=config.vision_config.image_size,
        patch_size=config.vision_config.patch_size,
        tower_tokens=config.vision_grid_size**2,
        text_model_type=config.text_config.model_type,
        text_hidden_size=config.text_config.hidden_size,
        **visual_token_budget(config),
        snippet=SNIPPET.format(repo_id=repo_id),
        example_prompt=processor.apply_chat_template(EXAMPLE_MESSAGES, add_generation_prompt=True, tokenize=False),
        image_token=processor.image_token,
        provenance={_table_cell(key): _table_cell(value) for key, value in (provenance or {}).items()},
        package_version=__version__,
    )


def save_for_hub(model, processor, folder: str | Path, *, card: ModelCard | None = None, **card_kwargs) -> Path:
    """Write a folder that loads with `trust_remote_code=True` without this package, with its model card.

    Args:
        folder: created if needed; must be empty, so that no stale file (an old pickle) is uploaded with it.
        card: the model card; rendered with `render_model_card(model, processor, **card_kwargs)` when `None`.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; save_for_hub writes into an empty folder.")
    if card is not None and card_kwargs:
        raise ValueError(f"Pass either card or the arguments to render one, not both (got {sorted(card_kwargs)}).")
    entry = model_type_entry(model)
    card = card or render_model_card(model, processor, **card_kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_remote_code(folder, entry, processor)
    card.save(folder / "README.md")
    pickled = sorted(path.name for path in folder.rglob("*") if path.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise RuntimeError(f"save_pretrained wrote pickle files {pickled}; a Hub folder must hold none.")
    return folder


def push_to_hub(
    model,
    processor,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload compressed VLM with remote code",
    create_pr: bool = False,
    api: HfApi | None = None,
    **card_kwargs,
):
    """Save with `save_for_hub` (the card's snippet loads `repo_id`) and upload the folder in one commit.

    Returns the `huggingface_hub.CommitInfo` of the upload.
    """
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        save_for_hub(model, processor, folder, repo_id=repo_id, **card_kwargs)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
