"""Convert an original QueCC checkpoint (locuslab/llava-token-compression) to `QueCCForConditionalGeneration`.

    python conversion_scripts/convert_quecc_original_to_hf.py --checkpoint DIR --vision-tower CLIP_DIR --output OUT

`convert_state_dict` is pure (dict in, dict out) and is what the parity tests run on the fixtures. The original
inserts QueCC at index 0 of the `mm_projector` Sequential, so its MLP linears sit at indices 1 and 3 (stock
LLaVA: 0 and 2); a stage-1 `mm_projector.bin` converts the same way. The original saves no vision-tower weights;
pass the CLIP tower's folder to fill them in.
"""

from __future__ import annotations

import argparse
import re

import torch

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
PACKED_ATTENTION = re.compile(QUECC + r"clip_attn\.in_proj_(weight|bias)$")


def convert_state_dict(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the original's keys to ours; the packed MHA in-projection is split into q, k, v.

    Works on gradients keyed like parameters too. Raises `KeyError` listing every key it does not know, rather
    than dropping weights silently.
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
        raise KeyError(f"{len(unknown)} checkpoint keys have no QueCC mapping: {sorted(unknown)}")
    return converted


def config_from_original(original_config: dict, vision_config, image_token_id: int):
    """A `QueCCConfig` from the original `config.json` (LLaMA fields + mm_* fields)."""
    from transformers import LlamaConfig

    from visual_token_compression import QueCCConfig

    llama_fields = {k: v for k, v in original_config.items() if not k.startswith("mm_")}
    for field in ("architectures", "model_type", "image_aspect_ratio", "image_grid_pinpoints"):
        llama_fields.pop(field, None)
    for field in ("mm_vision_token_compression_kernel_size", "mm_vision_token_compression_stride"):
        if original_config.get(field) is None:
            raise ValueError(f"The original config.json has no {field}; the released scripts use 4.")
    return QueCCConfig(
        vision_config=vision_config,
        text_config=LlamaConfig(**llama_fields),
        image_token_id=image_token_id,
        vision_feature_layer=original_config.get("mm_vision_select_layer", -2),
        kernel_size=int(original_config["mm_vision_token_compression_kernel_size"]),
        stride=int(original_config["mm_vision_token_compression_stride"]),
    )


def main(argv: list[str] | None = None) -> None:
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, CLIPVisionModel

    from conversion_scripts.convert_tokenpacker_original_to_hf import load_original_state_dict
    from visual_token_compression import QueCCForConditionalGeneration, QueCCProcessor

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
    model = QueCCForConditionalGeneration(config)
    model.resize_token_embeddings(state_dict["model.language_model.embed_tokens.weight"].shape[0])
    model.load_state_dict(state_dict, strict=True)
    # The new <image> row starts at the mean embedding, as transformers' LLaVA conversion does.
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.save_pretrained(output)
    QueCCProcessor.from_config(config, tokenizer).save_pretrained(output)


if __name__ == "__main__":
    main()
