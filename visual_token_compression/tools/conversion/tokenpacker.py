"""Original TokenPacker / TokenPacker-HD (LLaVA-1.5 fork) checkpoints -> `TokenPackerForConditionalGeneration`.

Key names follow the spec's table (tokenpacker.md §3.1, §6). The original saves no vision-tower weights, and its
config.json may lack `scale_factor` (first release: implicitly 2) and always lacks `patch_num` (a data argument);
both are then read from the release name (`-16patch-`, `-64token`, Osprey's `-patch9`) with a warning, or must be
given. A TokenPacker-HD + Osprey checkpoint (`mask_extractor.*` keys, tokenpacker_osprey.md §3) gets the region
extractor; its `<mask>` had no embedding row there, so it gets a new one (see `checkpoint.convert_checkpoint`).
"""

from __future__ import annotations

import logging
import math
import re

import torch

from .common import OriginalConverter, hint_from_name, rename_keys

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
    # TokenPacker-HD + Osprey: the region extractor keeps the original's submodule names.
    (r"^mask_extractor\.", "model.compressor.region_extractor."),
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
    hinted = hint_from_name(name, r"-(\d+)patch") or hint_from_name(name, r"-patch(\d+)")
    if hinted is not None:
        logger.warning("config.json has no patch_num (the original never saves it); using %d from the name.", hinted)
        return hinted
    raise ValueError(
        "This is a TokenPacker-HD checkpoint (image_aspect_ratio 'slice') but neither config.json nor its name "
        "('-9patch-', '-16patch-') gives patch_num: pass --patch-num (9, 16 or 25)."
    )


class TokenPackerConverter(OriginalConverter):
    """HD checkpoints get `row_separator="<unk>"`: the released Vicuna models saw the `<unk>` embedding after each
    row of tiles (the original's `convert_tokens_to_ids('\\n')` is unk for LLaMA vocabularies)."""

    method_config_keys = METHOD_CONFIG_KEYS
    convert_state_dict = staticmethod(convert_state_dict)

    def add_arguments(self, parser) -> None:
        parser.add_argument("--scale-factor", type=int, help="2/3/4; else config.json's or the name's '-64token'")
        parser.add_argument("--patch-num", type=int, help="HD: 9/16/25; else config.json's or the name's '-16patch-'")

    def config_fields(
        self, original_config, state_dict, text_config, vision_config, name, scale_factor=None, patch_num=None
    ):
        tower = vision_config if isinstance(vision_config, dict) else vision_config.to_dict()
        grid = tower["image_size"] // tower["patch_size"]
        regions = any(key.startswith("model.compressor.region_extractor.") for key in state_dict)
        fields = {
            **super().config_fields(original_config, state_dict, text_config, vision_config, name),
            "scale_factor": infer_scale_factor(original_config, name, grid, scale_factor),
            "patch_num": infer_patch_num(original_config, name, patch_num),
        }
        if regions:
            if fields["patch_num"] is None:  # a region model is HD whatever its config says: the name may tell
                fields["patch_num"] = hint_from_name(name, r"-(\d+)patch") or hint_from_name(name, r"-patch(\d+)")
                if fields["patch_num"] is not None:
                    logger.warning("Using patch_num=%d from the region checkpoint's name.", fields["patch_num"])
            if fields["patch_num"] is None:
                raise ValueError(
                    "This TokenPacker-HD + Osprey checkpoint (mask_extractor weights) needs patch_num, which neither "
                    "its config.json nor its name gives: pass --patch-num (9 for the released models)."
                )
            fields["use_region_extractor"] = True
        return fields

    def processor_kwargs(self, config, tokenizer):
        return {"row_separator": tokenizer.unk_token} if config.patch_num is not None else {}
