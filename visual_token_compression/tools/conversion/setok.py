"""Original SeTok / Setokim (ChocoWu/SeTok) checkpoints -> `SeTokForConditionalGeneration`.

Accepts the tokenizer's keys bare (`SetokTokenizer.state_dict()`), under `tokenizer.` (stage-1 `SeTok`) or under
`model.vision_tower.` (Setokim), plus Setokim's `mm_in_projector` and LLaMA keys. No SeTok weights are published,
so the folder conversion is exercised on tiny checkpoints only.
"""

from __future__ import annotations

import re

import torch

from .common import OriginalConverter, rename_keys

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


class SeTokConverter(OriginalConverter):
    vision_tower_required = "SeTok needs --vision-tower: the folder of its SigLIP tower (siglip-so400m-patch14-384)."
    convert_state_dict = staticmethod(convert_state_dict)

    def config_fields(self, original_config, state_dict, text_config, vision_config, name):
        """Widths read off the weights; the original reads its tower's features at SeTok's own default layer."""
        return {
            "token_feat_dim": state_dict["model.compressor.out.weight"].shape[0],
            "compressor_intermediate_size": state_dict["model.compressor.inner_encoder.mlp.fc1.weight"].shape[0],
        }
