"""Original VoCo-LLaMA (LLaVA-1.5 fork) checkpoints -> `VoCoLlamaForConditionalGeneration`.

`<voco>` keeps its id (32000 in the released setup, right after the base vocabulary); `<image>` is added after it,
with a mean-initialised row that is never read because image placeholders are overwritten by image features.
The released code hard-codes 2 VoCo tokens (voco_llama.md §2.2, §9.4).
"""

from __future__ import annotations

import torch

from ...compat import TRANSFORMERS_V5
from .common import OriginalConverter, rename_keys

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


class VoCoLlamaConverter(OriginalConverter):
    convert_state_dict = staticmethod(convert_state_dict)
    new_special_tokens = ("video_token_id",)  # the released code has no video

    def add_arguments(self, parser) -> None:
        parser.add_argument("--num-voco-tokens", type=int, default=2, help="VoCo tokens trained with (released: 2)")

    def config_fields(self, original_config, state_dict, text_config, vision_config, name, num_voco_tokens=2):
        projector = original_config.get("mm_projector_type", "mlp2x_gelu")
        if projector != "mlp2x_gelu":
            raise ValueError(f"Only the mlp2x_gelu projector is supported, got {projector!r}.")
        return {
            **super().config_fields(original_config, state_dict, text_config, vision_config, name),
            "num_voco_tokens": num_voco_tokens,
        }
