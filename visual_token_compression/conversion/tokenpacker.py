"""Original TokenPacker / TokenPacker-HD (LLaVA-1.5 fork) checkpoints -> `TokenPackerForConditionalGeneration`.

Key names follow the spec's table (tokenpacker.md §3.1, §6). The original saves no vision-tower weights, and its
config.json may lack `scale_factor` (first release: implicitly 2) and always lacks `patch_num` (a data argument);
both are then read from the release name (`-16patch-`, `-64token`) with a warning, or must be given.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch

from .common import (
    add_image_token,
    assemble,
    checkpoint_name,
    finish_and_save,
    hint_from_name,
    llama_text_config,
    load_original_config,
    load_original_state_dict,
    prepare_output,
    rename_keys,
    resolve_dtype,
    tower_config,
    vision_feature_layer,
)

logger = logging.getLogger(__name__)

PROJECTOR = r"^model\.mm_projector\."
# (original key pattern, our key pattern), tried in order; the first match wins.
KEY_RENAMES: list[tuple[str, str]] = [
    (PROJECTOR + r"q_proj_1\.", "model.compressor.query_proj."),
    (PROJECTOR + r"k_proj_1\.0\.", "model.compressor.key_mlp.fc1."),
    (PROJECTOR + r"k_proj_1\.2\.", "model.compressor.key_mlp.fc2."),
    (PROJECTOR + r"v_proj_1\.0\.", "model.compressor.value_mlp.fc1."),
    (PROJECTOR + r"v_proj_1\.2\.", "model.compressor.value_mlp.fc2."),
    (PROJECTOR + r"ln_q_1\.", "model.compressor.query_norm."),
    (PROJECTOR + r"ln_k_1\.", "model.compressor.key_norm."),
    (PROJECTOR + r"ln_v_1\.", "model.compressor.value_norm."),
    (PROJECTOR + r"clip_attn\.out_proj\.", "model.compressor.attn.out_proj."),
    (PROJECTOR + r"mlp\.0\.", "model.compressor.out_mlp.fc1."),
    (PROJECTOR + r"mlp\.2\.", "model.compressor.out_mlp.fc2."),
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^lm_head\.", "lm_head."),
]
PACKED_ATTENTION = (re.compile(PROJECTOR + r"clip_attn\.in_proj_(weight|bias)$"), "model.compressor.attn.")
METHOD_CONFIG_KEYS = ("scale_factor", "patch_num")


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the original's keys to ours; the packed MHA in-projection is split into q, k, v.

    Raises `KeyError` listing every key it does not know, rather than dropping weights silently.
    """
    return rename_keys(original, KEY_RENAMES, "TokenPacker", packed_attention=PACKED_ATTENTION)


def infer_scale_factor(original_config: dict, name: str, grid: int, scale_factor: int | None) -> int:
    """--scale-factor, else config.json's, else the release name's token count ('-64token': 24 / 8 = 3)."""
    if scale_factor is not None:
        return scale_factor
    if "scale_factor" in original_config:
        return int(original_config["scale_factor"])
    tokens = hint_from_name(name, r"-(\d+)token")
    side = math.isqrt(tokens) if tokens else 0
    if tokens and side * side == tokens and grid % side == 0:
        logger.warning(
            "config.json has no scale_factor; using %d from the release name's %d tokens.", grid // side, tokens
        )
        return grid // side
    raise ValueError(
        "config.json has no scale_factor and the checkpoint's name carries no '-<N>token': pass --scale-factor "
        "(2 for 144 tokens, 3 for 64, 4 for 36; checkpoints of the first release are 2)."
    )


def infer_patch_num(original_config: dict, name: str, patch_num: int | None) -> int | None:
    """None for plain TokenPacker; for HD ('slice') --patch-num, else config.json's, else the name's '-16patch-'."""
    if patch_num is not None:
        return patch_num
    if original_config.get("image_aspect_ratio") != "slice":
        return None
    if "patch_num" in original_config:
        return int(original_config["patch_num"])
    hinted = hint_from_name(name, r"-(\d+)patch")
    if hinted is not None:
        logger.warning("config.json has no patch_num (the original never saves it); using %d from the name.", hinted)
        return hinted
    raise ValueError(
        "This is a TokenPacker-HD checkpoint (image_aspect_ratio 'slice') but neither config.json nor its name "
        "('-9patch-', '-16patch-') gives patch_num: pass --patch-num (9, 16 or 25)."
    )


def config_from_original(
    original_config: dict,
    vision_config,
    image_token_id: int,
    name: str = "",
    scale_factor: int | None = None,
    patch_num: int | None = None,
    **overrides,
):
    """A `TokenPackerConfig` from the original `config.json` (LLaMA fields + mm_* fields + scale_factor);
    `overrides` are config fields the original hard-codes (e.g. `compressor_head_dim`, 128 there)."""
    from ..configuration.tokenpacker import TokenPackerConfig

    tower = vision_config if isinstance(vision_config, dict) else vision_config.to_dict()
    grid = tower["image_size"] // tower["patch_size"]
    return TokenPackerConfig(
        vision_config=vision_config,
        text_config=llama_text_config(original_config, METHOD_CONFIG_KEYS),
        image_token_id=image_token_id,
        vision_feature_layer=vision_feature_layer(original_config),
        scale_factor=infer_scale_factor(original_config, name, grid, scale_factor),
        patch_num=infer_patch_num(original_config, name, patch_num),
        **overrides,
    )


def convert_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    vision_tower: str | None = None,
    tokenizer: str | None = None,
    scale_factor: int | None = None,
    patch_num: int | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    config_overrides: dict | None = None,
) -> Path:
    """Write a `save_pretrained` folder (model + processor) converted from an original checkpoint folder.

    HD checkpoints get `row_separator="<unk>"`: the released Vicuna models saw the `<unk>` embedding after each
    row of tiles (the original's `convert_tokens_to_ids('\\n')` is unk for LLaMA vocabularies).
    """
    from transformers import AutoTokenizer

    from ..modeling.tokenpacker import TokenPackerForConditionalGeneration
    from ..processing.tokenpacker import TokenPackerProcessor

    output = prepare_output(output, overwrite)
    original_config = load_original_config(checkpoint)
    state_dict = convert_state_dict(load_original_state_dict(checkpoint))
    text_tokenizer = AutoTokenizer.from_pretrained(tokenizer or checkpoint)
    image_token_id = add_image_token(text_tokenizer)
    config = config_from_original(
        original_config,
        tower_config(vision_tower, state_dict, original_config),
        image_token_id,
        name=checkpoint_name(checkpoint, original_config),
        scale_factor=scale_factor,
        patch_num=patch_num,
        **(config_overrides or {}),
    )
    model = assemble(TokenPackerForConditionalGeneration, config, state_dict, vision_tower)
    separators = {"row_separator": text_tokenizer.unk_token} if config.patch_num is not None else {}
    processor = TokenPackerProcessor.from_config(config, text_tokenizer, **separators)
    finish_and_save(model, processor, text_tokenizer, output, resolve_dtype(dtype, state_dict))
    return output
