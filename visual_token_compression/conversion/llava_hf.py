"""Start a compressed VLM from an `llava-hf` checkpoint: its vision tower and LLM are reused, the compressor is new.

The result is ready for stage 1 (train the compressor with the rest frozen). The LLaVA projector is dropped: every
compressor here ends in its own projection to the LLM width.
"""

from __future__ import annotations

from pathlib import Path

from .common import finish_and_save, prepare_output


def config_from_llava(llava_config, model_type: str, image_token_id: int, **config_kwargs):
    """The method's config on llava-hf's tower and LLM configs, after checking the features it selects."""
    from ..auto import MODEL_TYPES

    if model_type not in MODEL_TYPES:
        raise ValueError(f"Unknown model type {model_type!r}; choose one of {sorted(MODEL_TYPES)}.")
    strategy = getattr(llava_config, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise ValueError(
            f"vision_feature_select_strategy={strategy!r}: the compressors read patch features ('default')."
        )
    layer = llava_config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer!r}: the compressors read one single-level layer.")
    return MODEL_TYPES[model_type].config_class(
        vision_config=llava_config.vision_config,
        text_config=llava_config.text_config,
        image_token_id=image_token_id,
        vision_feature_layer=layer,
        **config_kwargs,
    )


def convert_llava_hf(
    llava: str | Path, model_type: str, output: str | Path, overwrite: bool = False, **config_kwargs
) -> Path:
    """Write a `save_pretrained` folder: `model_type`'s compressor (fresh) between llava-hf's tower and LLM.

    `config_kwargs` are the method's config fields (`scale_factor`, `patch_num`, `stride`, `num_voco_tokens`, ...).
    The model keeps llava-hf's dtype and tokenizer; VoCo-LLaMA's `<voco>` is added when missing.
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from ..auto import MODEL_TYPES

    output = prepare_output(output, overwrite)
    source = LlavaForConditionalGeneration.from_pretrained(llava)
    tokenizer = AutoTokenizer.from_pretrained(llava)
    image_token_id = source.config.image_token_id
    if tokenizer.convert_tokens_to_ids("<image>") != image_token_id:
        raise ValueError(f"The tokenizer's <image> is not the model's image_token_id {image_token_id}.")
    if model_type == "voco_llama" and "voco_token_id" not in config_kwargs:
        if "<voco>" not in tokenizer.get_vocab():
            tokenizer.add_tokens(["<voco>"], special_tokens=True)
        config_kwargs["voco_token_id"] = tokenizer.convert_tokens_to_ids("<voco>")
    config = config_from_llava(source.config, model_type, image_token_id, **config_kwargs)
    entry = MODEL_TYPES[model_type]

    model = entry.for_generation_class(config)
    model.model.vision_tower.load_state_dict(source.model.vision_tower.state_dict())
    model.model.language_model.load_state_dict(source.model.language_model.state_dict())
    model.lm_head.load_state_dict(source.lm_head.state_dict())
    processor = entry.processor_class.from_config(config, tokenizer)
    finish_and_save(model, processor, tokenizer, output, next(source.parameters()).dtype)
    return output
