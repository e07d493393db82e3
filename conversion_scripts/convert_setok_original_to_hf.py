"""Convert an original SeTok / Setokim (ChocoWu/SeTok) checkpoint to `SeTokForConditionalGeneration`.

    python conversion_scripts/convert_setok_original_to_hf.py --checkpoint DIR --vision-tower DIR_OF_SIGLIP \
        --output OUT

`convert_state_dict` is pure (dict in, dict out) and is what the parity tests run on the fixtures. It accepts
the tokenizer's keys bare (`SetokTokenizer.state_dict()`), under `tokenizer.` (stage-1 `SeTok`) or under
`model.vision_tower.` (Setokim), plus Setokim's `mm_in_projector` and LLaMA keys. No SeTok weights are published,
so the CLI is only exercised through `convert_state_dict`.
"""

from __future__ import annotations

import argparse
import re

import torch

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
    converted, unknown, aliases = {}, [], []
    for key, tensor in original.items():
        if SHARED_NORM_ALIAS.match(key):
            aliases.append(key)
            continue
        if POSITION_INV_FREQ.match(key):
            ch = 2 * tensor.shape[0]
            expected = 1.0 / (10000 ** (torch.arange(0, ch, 2).float() / ch))
            if not torch.allclose(tensor.float(), expected):
                raise ValueError(f"{key} is not the standard 2-D sin-cos frequency table; cannot convert it.")
            continue
        for pattern, replacement in KEY_RENAMES:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} checkpoint keys have no SeTok mapping: {sorted(unknown)}")
    for key in aliases:
        encoder, name = SHARED_NORM_ALIAS.match(key).groups()
        norm1 = converted.get(f"model.compressor.{encoder}_encoder.norm1.{name}")
        if norm1 is None or not torch.equal(norm1, original[key]):
            raise ValueError(f"{key} should alias {encoder}_encoder.norm1.{name} (one shared LayerNorm) but differs.")
    return converted


def main(argv: list[str] | None = None) -> None:
    from pathlib import Path

    from transformers import AutoTokenizer, LlamaConfig, SiglipVisionModel

    from conversion_scripts.convert_tokenpacker_original_to_hf import load_original_state_dict
    from visual_token_compression import SeTokConfig, SeTokForConditionalGeneration, SeTokProcessor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="folder of the original Setokim checkpoint")
    parser.add_argument("--vision-tower", required=True, help="folder of siglip-so400m-patch14-384")
    parser.add_argument("--output", required=True, help="folder for the converted model; must not exist")
    args = parser.parse_args(argv)

    output = Path(args.output)
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new folder rather than overwriting it.")
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tower = SiglipVisionModel.from_pretrained(args.vision_tower)
    state_dict = convert_state_dict(load_original_state_dict(args.checkpoint))
    state_dict.update({f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()})
    config = SeTokConfig(
        vision_config=tower.config,
        text_config=LlamaConfig.from_pretrained(args.checkpoint),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        token_feat_dim=state_dict["model.compressor.out.weight"].shape[0],
        compressor_intermediate_size=state_dict["model.compressor.inner_encoder.mlp.fc1.weight"].shape[0],
    )
    model = SeTokForConditionalGeneration(config)
    model.resize_token_embeddings(state_dict["model.language_model.embed_tokens.weight"].shape[0])
    model.load_state_dict(state_dict, strict=True)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.save_pretrained(output)
    SeTokProcessor.from_config(config, tokenizer).save_pretrained(output)


if __name__ == "__main__":
    main()
