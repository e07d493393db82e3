"""Original SeTok / Setokim (ChocoWu/SeTok) checkpoints -> `SeTokForConditionalGeneration`.

Accepts the tokenizer's keys bare (`SetokTokenizer.state_dict()`), under `tokenizer.` (stage-1 `SeTok`) or under
`model.vision_tower.` (Setokim), plus Setokim's `mm_in_projector` and LLaMA keys. No SeTok weights are published,
so the folder conversion is exercised on tiny checkpoints only.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .common import (
    add_image_token,
    assemble,
    finish_and_save,
    llama_text_config,
    load_original_config,
    load_original_state_dict,
    prepare_output,
    rename_keys,
    resolve_dtype,
)

TOKENIZER = r"^(?:tokenizer\.|model\.vision_tower\.)?"
# (original key pattern, our key pattern), tried in order; the first match wins.
KEY_RENAMES: list[tuple[str, str]] = [
    (TOKENIZER + r"(inner|inter)_encoder\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.", r"model.compressor.\1_encoder.\2."),
    (
        TOKENIZER + r"(inner|inter)_encoder\.layers\.(\d+)\.1\.(qkv|proj)\.",
        r"model.compressor.\1_encoder.layers.\2.\3.",
    ),
    (TOKENIZER + r"out\.", "model.compressor.out."),
    (TOKENIZER + r"image_feature_encoder\.vision_tower\.vision_model\.", "model.vision_tower.vision_model."),
    (r"^model\.mm_in_projector\.0\.", "model.compressor.projector.fc1."),
    (r"^model\.mm_in_projector\.2\.", "model.compressor.projector.fc2."),
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^lm_head\.", "lm_head."),
]
# `layers.{i}.0` is the same LayerNorm object as `norm1` in the original (one norm shared by all layers).
SHARED_NORM_ALIAS = re.compile(TOKENIZER + r"(inner|inter)_encoder\.layers\.\d+\.0\.(weight|bias)$")
POSITION_INV_FREQ = re.compile(TOKENIZER + r"position_embedding\.inv_freq$")


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the original's keys to ours.

    The shared-LayerNorm aliases and the position table's `inv_freq` buffer are dropped after checking that they
    hold what we recompute (the norm1 copy; 10000^(-2j/ch)). Raises `KeyError` listing every unknown key.
    """
    kept, aliases = {}, []
    for key, tensor in original.items():
        if SHARED_NORM_ALIAS.match(key):
            aliases.append(key)
        elif POSITION_INV_FREQ.match(key):
            ch = 2 * tensor.shape[0]
            expected = 1.0 / (10000 ** (torch.arange(0, ch, 2).float() / ch))
            if not torch.allclose(tensor.float(), expected):
                raise ValueError(f"{key} is not the standard 2-D sin-cos frequency table; cannot convert it.")
        else:
            kept[key] = tensor
    converted = rename_keys(kept, KEY_RENAMES, "SeTok")
    for key in aliases:
        encoder, name = SHARED_NORM_ALIAS.match(key).groups()
        norm1 = converted.get(f"model.compressor.{encoder}_encoder.norm1.{name}")
        if norm1 is None or not torch.equal(norm1, original[key]):
            raise ValueError(f"{key} should alias {encoder}_encoder.norm1.{name} (one shared LayerNorm) but differs.")
    return converted


def convert_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    vision_tower: str | None = None,
    tokenizer: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    config_overrides: dict | None = None,
) -> Path:
    """Write a `save_pretrained` folder from a Setokim checkpoint folder and its SigLIP tower (--vision-tower)."""
    from transformers import AutoConfig, AutoTokenizer

    from ..configuration.setok import SeTokConfig
    from ..modeling.setok import SeTokForConditionalGeneration
    from ..processing.setok import SeTokProcessor

    if vision_tower is None:
        raise ValueError("SeTok needs --vision-tower: the folder of its SigLIP tower (siglip-so400m-patch14-384).")
    output = prepare_output(output, overwrite)
    original_config = load_original_config(checkpoint)
    state_dict = convert_state_dict(load_original_state_dict(checkpoint))
    text_tokenizer = AutoTokenizer.from_pretrained(tokenizer or checkpoint)
    tower = AutoConfig.from_pretrained(vision_tower)
    config = SeTokConfig(
        vision_config=getattr(tower, "vision_config", tower),
        text_config=llama_text_config(original_config),
        image_token_id=add_image_token(text_tokenizer),
        token_feat_dim=state_dict["model.compressor.out.weight"].shape[0],
        compressor_intermediate_size=state_dict["model.compressor.inner_encoder.mlp.fc1.weight"].shape[0],
        **(config_overrides or {}),
    )
    model = assemble(SeTokForConditionalGeneration, config, state_dict, vision_tower)
    processor = SeTokProcessor.from_config(config, text_tokenizer)
    finish_and_save(model, processor, text_tokenizer, output, resolve_dtype(dtype, state_dict))
    return output
