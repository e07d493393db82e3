"""Convert an original VoCo-LLaMA (LLaVA-1.5 fork) checkpoint to `VoCoLlamaForConditionalGeneration`.

    python conversion_scripts/convert_voco_llama_original_to_hf.py --checkpoint DIR --vision-tower DIR_OF_CLIP \
        --output OUT [--num-voco-tokens 2]

`convert_state_dict` is pure (dict in, dict out) and is what the parity tests run on the fixtures. `<voco>` keeps
its id (32000 in the released setup); `<image>` is added after it, with a mean-initialised row that is never read
because image placeholders are overwritten by image features. The released code hard-codes 2 VoCo tokens.
"""

from __future__ import annotations

import argparse
import re

import torch

from visual_token_compression.compat import TRANSFORMERS_V5

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
    converted, unknown = {}, []
    for key, tensor in original.items():
        for pattern, replacement in KEY_RENAMES:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} checkpoint keys have no VoCo-LLaMA mapping: {sorted(unknown)}")
    return converted


def config_from_original(
    original_config: dict, vision_config, image_token_id: int, voco_token_id: int, num_voco_tokens: int
):
    """A `VoCoLlamaConfig` from the original `config.json` (LLaMA fields + mm_* / tokenizer_* fields)."""
    from transformers import LlamaConfig

    from visual_token_compression import VoCoLlamaConfig

    if original_config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ValueError(f"Only the mlp2x_gelu projector is supported, got {original_config['mm_projector_type']!r}.")
    dropped = ("architectures", "model_type", "image_aspect_ratio", "image_grid_pinpoints", "freeze_mm_mlp_adapter")
    llama_fields = {
        k: v
        for k, v in original_config.items()
        if not k.startswith(("mm_", "tokenizer_", "tune_mm_", "use_mm_")) and k not in dropped
    }
    return VoCoLlamaConfig(
        vision_config=vision_config,
        text_config=LlamaConfig(**llama_fields),
        image_token_id=image_token_id,
        vision_feature_layer=original_config.get("mm_vision_select_layer", -2),
        voco_token_id=voco_token_id,
        num_voco_tokens=num_voco_tokens,
    )


def load_original_state_dict(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """Every `*.safetensors` or `*.bin` shard of an original checkpoint folder (never unpickling code)."""
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(checkpoint_dir)
    shards = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not shards:
        raise FileNotFoundError(f"No *.safetensors or *.bin weights in {folder}")
    state_dict = {}
    for shard in shards:
        if shard.suffix == ".safetensors":
            state_dict.update(load_file(shard))
        else:
            state_dict.update(torch.load(shard, map_location="cpu", weights_only=True))
    return state_dict


def main(argv: list[str] | None = None) -> None:
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, CLIPVisionModel

    from visual_token_compression import VoCoLlamaForConditionalGeneration, VoCoLlamaProcessor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="folder of the original checkpoint")
    parser.add_argument("--vision-tower", required=True, help="folder of the CLIP tower (clip-vit-large-patch14-336)")
    parser.add_argument("--output", required=True, help="folder for the converted model; must not exist")
    parser.add_argument("--num-voco-tokens", type=int, default=2, help="VoCo tokens the checkpoint was trained with")
    args = parser.parse_args(argv)

    output = Path(args.output)
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new folder rather than overwriting it.")
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    state_dict = convert_state_dict(load_original_state_dict(args.checkpoint))
    vocab = state_dict["model.language_model.embed_tokens.weight"].shape[0]
    # The original adds <voco> right after the base vocabulary (id 32000 for Vicuna) unless the tokenizer has it.
    if "<voco>" not in tokenizer.get_vocab():
        tokenizer.add_tokens(["<voco>"], special_tokens=True)
    voco_token_id = tokenizer.convert_tokens_to_ids("<voco>")
    if voco_token_id >= vocab:
        raise ValueError(f"<voco> has id {voco_token_id} but the checkpoint's embeddings have only {vocab} rows.")
    tokenizer.add_tokens(["<image>"], special_tokens=True)

    tower = CLIPVisionModel.from_pretrained(args.vision_tower)
    original_config = json.loads((Path(args.checkpoint) / "config.json").read_text())
    config = config_from_original(
        original_config, tower.config, tokenizer.convert_tokens_to_ids("<image>"), voco_token_id, args.num_voco_tokens
    )
    if not any(key.startswith(VISION_PREFIX) for key in state_dict):
        state_dict.update({f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()})
    model = VoCoLlamaForConditionalGeneration(config)
    model.resize_token_embeddings(vocab)
    model.load_state_dict(state_dict, strict=True)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.save_pretrained(output)
    VoCoLlamaProcessor.from_config(model.config, tokenizer).save_pretrained(output)


if __name__ == "__main__":
    main()
