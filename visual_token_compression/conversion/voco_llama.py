"""Original VoCo-LLaMA (LLaVA-1.5 fork) checkpoints -> `VoCoLlamaForConditionalGeneration`.

`<voco>` keeps its id (32000 in the released setup, right after the base vocabulary); `<image>` is added after it,
with a mean-initialised row that is never read because image placeholders are overwritten by image features.
The released code hard-codes 2 VoCo tokens (voco_llama.md §2.2, §9.4).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..compat import TRANSFORMERS_V5
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
    tower_config,
    vision_feature_layer,
)

# 5.x builds CLIPVisionModel without its `vision_model.` level; 4.x keeps it.
VISION_PREFIX = "model.vision_tower." if TRANSFORMERS_V5 else "model.vision_tower.vision_model."

# (original key pattern, our key pattern), tried in order; the first match wins.
KEY_RENAMES: list[tuple[str, str]] = [
    (r"^model\.mm_projector\.0\.", "model.compressor.fc1."),
    (r"^model\.mm_projector\.2\.", "model.compressor.fc2."),
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", VISION_PREFIX),
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^lm_head\.", "lm_head."),
]


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the original's keys to ours. Raises `KeyError` listing every key it does not know."""
    return rename_keys(original, KEY_RENAMES, "VoCo-LLaMA")


def config_from_original(
    original_config: dict, vision_config, image_token_id: int, voco_token_id: int, num_voco_tokens: int, **overrides
):
    """A `VoCoLlamaConfig` from the original `config.json` (LLaMA fields + mm_* / tokenizer_* fields)."""
    from ..configuration.voco_llama import VoCoLlamaConfig

    if original_config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ValueError(f"Only the mlp2x_gelu projector is supported, got {original_config['mm_projector_type']!r}.")
    return VoCoLlamaConfig(
        vision_config=vision_config,
        text_config=llama_text_config(original_config),
        image_token_id=image_token_id,
        vision_feature_layer=vision_feature_layer(original_config),
        voco_token_id=voco_token_id,
        num_voco_tokens=num_voco_tokens,
        **overrides,
    )


def convert_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    vision_tower: str | None = None,
    tokenizer: str | None = None,
    num_voco_tokens: int = 2,
    dtype: str = "auto",
    overwrite: bool = False,
    config_overrides: dict | None = None,
) -> Path:
    """Write a `save_pretrained` folder (model + processor) converted from an original VoCo-LLaMA checkpoint folder."""
    from transformers import AutoTokenizer

    from ..modeling.voco_llama import VoCoLlamaForConditionalGeneration
    from ..processing.voco_llama import VoCoLlamaProcessor

    output = prepare_output(output, overwrite)
    original_config = load_original_config(checkpoint)
    state_dict = convert_state_dict(load_original_state_dict(checkpoint))
    rows = state_dict["model.language_model.embed_tokens.weight"].shape[0]
    text_tokenizer = AutoTokenizer.from_pretrained(tokenizer or checkpoint)
    # The original adds <voco> right after the base vocabulary unless the tokenizer has it already.
    if "<voco>" not in text_tokenizer.get_vocab():
        text_tokenizer.add_tokens(["<voco>"], special_tokens=True)
    voco_token_id = text_tokenizer.convert_tokens_to_ids("<voco>")
    if voco_token_id >= rows:
        raise ValueError(f"<voco> has id {voco_token_id} but the checkpoint's embeddings have only {rows} rows.")
    image_token_id = add_image_token(text_tokenizer)
    config = config_from_original(
        original_config,
        tower_config(vision_tower, state_dict, original_config),
        image_token_id,
        voco_token_id,
        num_voco_tokens,
        **(config_overrides or {}),
    )
    model = assemble(VoCoLlamaForConditionalGeneration, config, state_dict, vision_tower)
    processor = VoCoLlamaProcessor.from_config(model.config, text_tokenizer)
    finish_and_save(model, processor, text_tokenizer, output, resolve_dtype(dtype, state_dict))
    return output
