"""Original QueCC checkpoints (locuslab/llava-token-compression) -> `QueCCForConditionalGeneration`.

The original inserts QueCC at index 0 of the `mm_projector` Sequential, so its MLP linears sit at indices 1 and 3
(stock LLaVA: 0 and 2); a stage-1 `mm_projector.bin` converts the same way (quecc.md §4). The original saves no
vision-tower weights.
"""

from __future__ import annotations

import re

import torch

from .common import OriginalConverter, rename_keys

QUECC = r"^model\.mm_projector\.0\."
# (original key pattern, our key pattern), tried in order; the first match wins.
KEY_RENAMES: list[tuple[str, str]] = [
    (QUECC + r"clip_attn\.out_proj\.", "model.compressor.attn.out_proj."),
    (QUECC + r"q_proj\.0\.", "model.compressor.query_mlp.fc1."),
    (QUECC + r"q_proj\.2\.", "model.compressor.query_mlp.fc2."),
    (QUECC + r"q_proj\.3\.", "model.compressor.query_norm."),
    (QUECC + r"k_proj\.0\.", "model.compressor.key_mlp.fc1."),
    (QUECC + r"k_proj\.2\.", "model.compressor.key_mlp.fc2."),
    (QUECC + r"k_proj\.3\.", "model.compressor.key_norm."),
    (QUECC + r"v_proj\.0\.", "model.compressor.value_mlp.fc1."),
    (QUECC + r"v_proj\.2\.", "model.compressor.value_mlp.fc2."),
    (QUECC + r"v_proj\.3\.", "model.compressor.value_norm."),
    (QUECC + r"q_downsample\.", "model.compressor.query_downsample."),
    (QUECC + r"text_projection\.0\.", "model.compressor.text_proj."),
    (QUECC + r"text_projection\.1\.", "model.compressor.text_norm."),
    (r"^model\.mm_projector\.1\.", "model.compressor.out_mlp.fc1."),
    (r"^model\.mm_projector\.3\.", "model.compressor.out_mlp.fc2."),
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^lm_head\.", "lm_head."),
]
PACKED_ATTENTION = (re.compile(QUECC + r"clip_attn\.in_proj_(weight|bias)$"), "model.compressor.attn.")


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the original's keys to ours; the packed MHA in-projection is split into q, k, v.

    Works on gradients keyed like parameters too. Raises `KeyError` listing every key it does not know.
    """
    return rename_keys(original, KEY_RENAMES, "QueCC", packed_attention=PACKED_ATTENTION)


class QueCCConverter(OriginalConverter):
    convert_state_dict = staticmethod(convert_state_dict)

    def config_fields(self, original_config, state_dict, text_config, vision_config, name):
        """kernel_size and stride from the mm_vision_token_compression_* fields, after checking the query width."""
        compression = original_config.get("mm_vision_token_compression_type")
        if compression != "quecc":
            raise ValueError(f"mm_vision_token_compression_type is {compression!r}; a QueCC checkpoint has 'quecc'.")
        for field in ("mm_vision_token_compression_kernel_size", "mm_vision_token_compression_stride"):
            if original_config.get(field) is None:
                raise ValueError(f"The original config.json has no {field}; the released scripts use 4.")
        query_width = original_config.get("mm_vision_output_text_embedding_size", text_config.hidden_size)
        if query_width != text_config.hidden_size:
            raise ValueError(
                f"mm_vision_output_text_embedding_size={query_width} is not the LLM width {text_config.hidden_size}."
            )
        return {
            **super().config_fields(original_config, state_dict, text_config, vision_config, name),
            "kernel_size": int(original_config["mm_vision_token_compression_kernel_size"]),
            "stride": int(original_config["mm_vision_token_compression_stride"]),
        }
