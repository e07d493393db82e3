"""Convert an original TokenPacker / TokenPacker-HD (LLaVA-1.5 fork) checkpoint to `TokenPackerForConditionalGeneration`.

    python conversion_scripts/convert_tokenpacker_original_to_hf.py --checkpoint DIR --output OUT \
        [--vision-tower DIR_OF_CLIP] [--tokenizer DIR]

`convert_state_dict` is pure (dict in, dict out) and is what the parity tests run on the fixtures.
The original saves no vision-tower weights; pass the CLIP tower's folder to fill them in.
"""

from __future__ import annotations

import argparse
import re

import torch

# (original key pattern, our key pattern), tried in order; the first match wins.
KEY_RENAMES: list[tuple[str, str]] = [
    (r"^model\.mm_projector\.q_proj_1\.", "model.compressor.query_proj."),
    (r"^model\.mm_projector\.k_proj_1\.0\.", "model.compressor.key_mlp.fc1."),
    (r"^model\.mm_projector\.k_proj_1\.2\.", "model.compressor.key_mlp.fc2."),
    (r"^model\.mm_projector\.v_proj_1\.0\.", "model.compressor.value_mlp.fc1."),
    (r"^model\.mm_projector\.v_proj_1\.2\.", "model.compressor.value_mlp.fc2."),
    (r"^model\.mm_projector\.ln_q_1\.", "model.compressor.query_norm."),
    (r"^model\.mm_projector\.ln_k_1\.", "model.compressor.key_norm."),
    (r"^model\.mm_projector\.ln_v_1\.", "model.compressor.value_norm."),
    (r"^model\.mm_projector\.clip_attn\.out_proj\.", "model.compressor.attn.out_proj."),
    (r"^model\.mm_projector\.mlp\.0\.", "model.compressor.out_mlp.fc1."),
    (r"^model\.mm_projector\.mlp\.2\.", "model.compressor.out_mlp.fc2."),
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^lm_head\.", "lm_head."),
]
PACKED_ATTENTION = re.compile(r"^model\.mm_projector\.clip_attn\.in_proj_(weight|bias)$")


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the original's keys to ours; the packed MHA in-projection is split into q, k, v.

    Raises `KeyError` listing every key it does not know, rather than dropping weights silently.
    """
    converted, unknown = {}, []
    for key, tensor in original.items():
        packed = PACKED_ATTENTION.match(key)
        if packed:
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                converted[f"model.compressor.attn.{name}.{packed.group(1)}"] = chunk.clone()
            continue
        for pattern, replacement in KEY_RENAMES:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} checkpoint keys have no TokenPacker mapping: {sorted(unknown)}")
    return converted


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


def config_from_original(original_config: dict, vision_config, image_token_id: int):
    """A `TokenPackerConfig` from the original `config.json` (LLaMA fields + mm_* fields)."""
    from transformers import LlamaConfig

    from visual_token_compression import TokenPackerConfig

    llama_fields = {k: v for k, v in original_config.items() if not k.startswith("mm_")}
    for field in ("architectures", "model_type", "image_aspect_ratio", "image_grid_pinpoints", "scale_factor"):
        llama_fields.pop(field, None)
    if "scale_factor" not in original_config:
        raise ValueError(
            "The original config.json has no scale_factor (checkpoints of the first release are implicitly 2): "
            "add it, e.g. 2 for -144token, 3 for -64token, 4 for -36token."
        )
    return TokenPackerConfig(
        vision_config=vision_config,
        text_config=LlamaConfig(**llama_fields),
        image_token_id=image_token_id,
        vision_feature_layer=original_config.get("mm_vision_select_layer", -2),
        scale_factor=int(original_config["scale_factor"]),
    )


def main(argv: list[str] | None = None) -> None:
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, CLIPVisionModel

    from visual_token_compression import TokenPackerForConditionalGeneration, TokenPackerProcessor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="folder of the original checkpoint")
    parser.add_argument("--vision-tower", required=True, help="folder of the CLIP tower (clip-vit-large-patch14-336)")
    parser.add_argument("--output", required=True, help="folder for the converted model; must not exist")
    args = parser.parse_args(argv)

    output = Path(args.output)
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new folder rather than overwriting it.")
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tower = CLIPVisionModel.from_pretrained(args.vision_tower)
    original_config = json.loads((Path(args.checkpoint) / "config.json").read_text())
    config = config_from_original(original_config, tower.config, tokenizer.convert_tokens_to_ids("<image>"))

    state_dict = convert_state_dict(load_original_state_dict(args.checkpoint))
    state_dict.update({f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()})
    model = TokenPackerForConditionalGeneration(config)
    vocab = state_dict["model.language_model.embed_tokens.weight"].shape[0]
    model.resize_token_embeddings(vocab)
    model.load_state_dict(state_dict, strict=True)
    # The new <image> row starts at the mean embedding, as transformers' LLaVA conversion does.
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.save_pretrained(output)
    TokenPackerProcessor.from_config(config, tokenizer).save_pretrained(output)


if __name__ == "__main__":
    main()
