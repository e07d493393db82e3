"""Start a compressed VLM from an `llava-hf` checkpoint: its vision tower and LLM are reused, the compressor is new.

The result is ready for stage 1 (train the compressor with the rest frozen). The LLaVA projector is dropped, as
every compressor ends in its own projection to the LLM width, unless the method's entry in `converters.LLAVA_PROJECTORS` names
the compressor modules that take its weights (VisionZip: then no training is needed).
"""

from __future__ import annotations

from pathlib import Path

from ...registry import MODEL_TYPES
from .common import finish_and_save, prepare_output
from .converters import LLAVA_PROJECTORS


def registered(model_type: str):
    """The registry entry of `model_type`, or an error naming the registered ones."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"Unknown model type {model_type!r}; choose one of {sorted(MODEL_TYPES)}.")
    return MODEL_TYPES[model_type]


def config_from_llava(llava_config, model_type: str, image_token_id: int, **config_kwargs):
    """The method's config on llava-hf's tower and LLM configs, after checking the features it selects."""
    entry = registered(model_type)
    strategy = getattr(llava_config, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise ValueError(
            f"vision_feature_select_strategy={strategy!r}: the compressors read patch features ('default')."
        )
    layer = llava_config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer!r}: the compressors read one single-level layer.")
    return entry.config_class(
        vision_config=llava_config.vision_config,
        text_config=llava_config.text_config,
        image_token_id=image_token_id,
        vision_feature_layer=layer,
        **config_kwargs,
    )


def load_llava_projector(compressor, source, modules: dict[str, str]) -> None:
    """Copy llava-hf's `multi_modal_projector.<name>` into `compressor.<ours>` for each pair of `modules`."""
    if not modules:
        return
    activation = source.config.projector_hidden_act
    if activation != "gelu":
        raise ValueError(f"projector_hidden_act={activation!r}: the reused projector computes gelu.")
    for theirs, ours in modules.items():
        compressor.get_submodule(ours).load_state_dict(
            source.model.multi_modal_projector.get_submodule(theirs).state_dict()
        )


def convert_llava_hf(
    llava: str | Path, model_type: str, output: str | Path, overwrite: bool = False, **config_kwargs
) -> Path:
    """Write a `save_pretrained` folder: `model_type`'s compressor (fresh) between llava-hf's tower and LLM.

    `config_kwargs` are the method's config fields (`scale_factor`, `patch_num`, `stride`, `num_voco_tokens`, ...).
    The model keeps llava-hf's dtype and tokenizer; the method's special tokens (`<voco>`) are added when missing.
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    entry = registered(model_type)
    output = prepare_output(output, overwrite)
    source = LlavaForConditionalGeneration.from_pretrained(llava)
    tokenizer = AutoTokenizer.from_pretrained(llava)
    image_token_id = source.config.image_token_id
    if tokenizer.convert_tokens_to_ids("<image>") != image_token_id:
        raise ValueError(f"The tokenizer's <image> is not the model's image_token_id {image_token_id}.")
    for field, token in entry.special_tokens_for(config_kwargs).items():
        if field not in config_kwargs:
            if token not in tokenizer.get_vocab():
                tokenizer.add_tokens([token], special_tokens=True)
            config_kwargs[field] = tokenizer.convert_tokens_to_ids(token)
    config = config_from_llava(source.config, model_type, image_token_id, **config_kwargs)

    model = entry.for_generation_class(config)
    model.model.vision_tower.load_state_dict(source.model.vision_tower.state_dict())
    model.model.language_model.load_state_dict(source.model.language_model.state_dict())
    model.lm_head.load_state_dict(source.lm_head.state_dict())
    load_llava_projector(model.model.compressor, source, LLAVA_PROJECTORS[model_type])
    processor = entry.processor_class.from_config(config, tokenizer)
    finish_and_save(model, processor, tokenizer, output, next(source.parameters()).dtype)
    return output
