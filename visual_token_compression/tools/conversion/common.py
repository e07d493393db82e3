"""What every conversion shares: reading original checkpoints, renaming keys, the LLaMA config, writing the output.

`checkpoint.convert_checkpoint` is the one conversion of an original checkpoint folder; an `OriginalConverter` (the
model type's entry in `converters.CONVERTERS`) supplies what differs per method: key renames, config fields,
processor arguments.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ...configuration.base import DEFAULT_VISION_CONFIG
from ..building import load_vision_tower

logger = logging.getLogger(__name__)

# Keys of an original LLaVA-1.5-fork config.json that are not LLaMA fields. Method-specific keys are added by each
# method's converter; any other key is passed to `LlamaConfig` (which keeps unknown fields as attributes).
LLAVA_CONFIG_KEYS = (
    "_name_or_path",
    "architectures",
    "model_type",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "freeze_mm_mlp_adapter",
    "tune_mm_mlp_adapter",
    "use_mm_proj",
    "transformers_version",
)
LLAVA_CONFIG_PREFIXES = ("mm_", "tokenizer_")


def load_original_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every `*.safetensors` or `*.bin` shard of an original checkpoint folder.

    `.bin` shards are read with `torch.load(weights_only=True)`, so a checkpoint can never run code on load.
    """
    from safetensors.torch import load_file

    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder.")
    shards = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not shards:
        raise FileNotFoundError(f"No *.safetensors or *.bin weights in {folder}.")
    state_dict = {}
    for shard in shards:
        if shard.suffix == ".safetensors":
            state_dict.update(load_file(shard))
        else:
            state_dict.update(torch.load(shard, map_location="cpu", weights_only=True))
    return state_dict


def load_original_config(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: an original checkpoint folder holds its config.json.")
    return json.loads(path.read_text())


def rename_keys(
    original: dict[str, torch.Tensor],
    renames: list[tuple[str, str]],
    method: str,
    packed_attention: tuple[re.Pattern, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Apply the first matching `(pattern, replacement)` to every key.

    `packed_attention` is `(pattern, target_prefix)`: a matching packed MHA in-projection is split into its q, k, v
    rows. Raises `KeyError` listing every key nothing matches, rather than dropping weights silently.
    """
    converted, unknown = {}, []
    for key, tensor in original.items():
        packed = packed_attention[0].match(key) if packed_attention else None
        if packed:
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                converted[f"{packed_attention[1]}{name}.{packed.group(1)}"] = chunk.clone()
            continue
        for pattern, replacement in renames:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} checkpoint keys have no {method} mapping: {sorted(unknown)}")
    return converted


def llama_text_config(original_config: dict, method_keys: tuple[str, ...] = ()):
    """The LLM's `LlamaConfig` from an original LLaVA config.json: every field that is not LLaVA's or the method's."""
    from transformers import LlamaConfig

    fields = {
        key: value
        for key, value in original_config.items()
        if key not in LLAVA_CONFIG_KEYS + method_keys and not key.startswith(LLAVA_CONFIG_PREFIXES)
    }
    # 4.x configs name it torch_dtype; the LLM's dtype is decided when the converted model is saved.
    fields.pop("torch_dtype", None)
    fields.pop("dtype", None)
    return LlamaConfig(**fields)


def vision_feature_layer(original_config: dict) -> int:
    """`mm_vision_select_layer`, after checking the original dropped CLS ('patch'), as every model here does."""
    select = original_config.get("mm_vision_select_feature", "patch")
    if select != "patch":
        raise ValueError(
            f"mm_vision_select_feature={select!r} is not supported: the compressors read 'patch' features."
        )
    return int(original_config.get("mm_vision_select_layer", -2))


def hint_from_name(name: str, pattern: str) -> int | None:
    """The number a release name carries, e.g. 16 from '...-16patch-...' with pattern r'-(\\d+)patch'."""
    match = re.search(pattern, name)
    return int(match.group(1)) if match else None


def checkpoint_name(checkpoint_dir: str | Path, original_config: dict) -> str:
    """Where a release name can be read: the folder's resolved path (hub caches keep the repo id in it) and
    the config's `_name_or_path`."""
    return f"{Path(checkpoint_dir).resolve()} {original_config.get('_name_or_path', '')}"


def prepare_output(output: str | Path, overwrite: bool) -> Path:
    """The output folder, refusing to replace an existing one unless `overwrite` is set."""
    output = Path(output)
    if output.exists():
        if not overwrite:
            raise FileExistsError(f"{output} exists; choose a new folder or pass --overwrite to replace it.")
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    return output


def load_converted(model, state_dict: dict[str, torch.Tensor]) -> None:
    """`load_state_dict` that names every missing and unexpected key (and all of them, not the first few)."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise KeyError(
            f"The converted weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}."
        )
    model.load_state_dict(state_dict, strict=True)


def resolve_dtype(dtype: str, state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    """'auto' is the dtype of the checkpoint's embeddings (fp16 for the released models)."""
    if dtype == "auto":
        embeddings = next((v for k, v in state_dict.items() if k.endswith("embed_tokens.weight")), None)
        return embeddings.dtype if embeddings is not None else torch.float32
    return getattr(torch, dtype)


def add_image_token(tokenizer) -> int:
    """`<image>` as a new special token; LLaVA v1 pads with `<unk>` when the tokenizer has no pad token."""
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids("<image>")


def finish_and_save(model, processor, tokenizer, output: Path, dtype: torch.dtype) -> None:
    """Grow the embeddings to the tokenizer when it outgrew them (new rows at the mean, as transformers' LLaVA
    conversion does; padded vocabularies are kept), cast, set the generation ids and write model and processor."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.to(dtype)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output)
    processor.save_pretrained(output)
    logger.info("Wrote %s", output)


def assemble(model_class, config, state_dict: dict[str, torch.Tensor], vision_tower: str | None):
    """The converted model: the original's weights plus, when it saved none (the usual case), the tower's."""
    if not any(key.startswith("model.vision_tower.") for key in state_dict):
        if vision_tower is None:
            raise ValueError(
                "The checkpoint holds no vision-tower weights (the originals rebuild the tower from mm_vision_tower): "
                "pass --vision-tower with the tower's folder, e.g. clip-vit-large-patch14-336."
            )
        tower = load_vision_tower(vision_tower)
        state_dict = {**state_dict, **{f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()}}
    model = model_class(config)
    model.resize_token_embeddings(state_dict["model.language_model.embed_tokens.weight"].shape[0])
    load_converted(model, state_dict)
    return model


def tower_config(vision_tower: str | None, original_config: dict):
    """The tower's config: from --vision-tower, else the CLIP-L/14-336 every original used (checked on its width)."""
    from transformers import AutoConfig

    if vision_tower is not None:
        config = AutoConfig.from_pretrained(vision_tower)
        return getattr(config, "vision_config", config)
    hidden = original_config.get("mm_hidden_size", DEFAULT_VISION_CONFIG["hidden_size"])
    if hidden != DEFAULT_VISION_CONFIG["hidden_size"]:
        raise ValueError(f"mm_hidden_size={hidden} is not CLIP-L/14-336's; pass --vision-tower.")
    return dict(DEFAULT_VISION_CONFIG)


class OriginalConverter:
    """What one method's original checkpoints need beyond the steps every conversion shares.

    Subclasses set `convert_state_dict` (pure, raises on unknown keys); the other hooks default to a LLaVA-1.5 fork
    that only adds its compressor.
    """

    # Keys of the original config.json that are the method's, not the LLM's.
    method_config_keys: tuple[str, ...] = ()
    # Set when the conversion cannot run without --vision-tower: the error that asks for it.
    vision_tower_required: str | None = None
    # Config fields of the model type's special tokens that the original never trained (added after `<image>`).
    new_special_tokens: tuple[str, ...] = ()

    def convert_state_dict(self, original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def add_arguments(self, parser) -> None:
        """The method's own `vtc convert <method>` options; their values reach `config_fields`."""

    def config_fields(
        self, original_config: dict, state_dict: dict[str, torch.Tensor], text_config, vision_config, name: str
    ) -> dict[str, Any]:
        """Config fields besides the towers and token ids, from the original config, weights and release name."""
        return {"vision_feature_layer": vision_feature_layer(original_config)}

    def processor_kwargs(self, config, tokenizer) -> dict[str, Any]:
        return {}


def add_special_tokens(tokenizer, special_tokens: dict[str, str], rows: int) -> dict[str, int]:
    """The method's tokens (config field -> token), added after the base vocabulary unless the tokenizer has them,
    as the originals do; each must fit the checkpoint's embedding rows, which were trained with it."""
    ids = {}
    for field, token in special_tokens.items():
        if token not in tokenizer.get_vocab():
            tokenizer.add_tokens([token], special_tokens=True)
        ids[field] = tokenizer.convert_tokens_to_ids(token)
        if ids[field] >= rows:
            raise ValueError(f"{token} has id {ids[field]} but the checkpoint's embeddings have only {rows} rows.")
    return ids
