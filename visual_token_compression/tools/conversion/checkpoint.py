"""`vtc convert <method>`: an original checkpoint folder -> a `save_pretrained` folder of this library."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from ...registry import MODEL_TYPES
from .common import (
    add_image_token,
    add_special_tokens,
    assemble,
    checkpoint_name,
    finish_and_save,
    llama_text_config,
    load_original_config,
    load_original_state_dict,
    prepare_output,
    resolve_dtype,
    tower_config,
)
from .converters import CONVERTERS


def convert_checkpoint(
    model_type: str,
    checkpoint: str | Path,
    output: str | Path,
    vision_tower: str | None = None,
    tokenizer: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    config_overrides: dict | None = None,
    **options,
) -> Path:
    """Write a `save_pretrained` folder (model + processor) converted from an original `model_type` checkpoint.

    `options` are the method's own `vtc convert` options (`OriginalConverter.add_arguments`); `config_overrides`
    are config fields the original hard-codes (e.g. TokenPacker's `compressor_head_dim`, 128 there).
    """
    entry = MODEL_TYPES[model_type]
    converter = CONVERTERS[model_type]
    if converter is None:
        raise ValueError(f"{model_type} has no original checkpoints to convert; start it from llava-hf instead.")
    if converter.vision_tower_required and vision_tower is None:
        raise ValueError(converter.vision_tower_required)
    output = prepare_output(output, overwrite)
    original_config = load_original_config(checkpoint)
    state_dict = converter.convert_state_dict(load_original_state_dict(checkpoint))
    text_tokenizer = AutoTokenizer.from_pretrained(tokenizer or checkpoint)
    rows = state_dict["model.language_model.embed_tokens.weight"].shape[0]
    trained = {name: token for name, token in entry.special_tokens.items() if name not in converter.new_special_tokens}
    token_ids = add_special_tokens(text_tokenizer, trained, rows)
    image_token_id = add_image_token(text_tokenizer)
    # Tokens the original never had (VoCo-LLaMA's <video>) come after <image>, with mean rows as <image>'s.
    text_tokenizer.add_tokens(
        [entry.special_tokens[name] for name in converter.new_special_tokens], special_tokens=True
    )
    token_ids |= {
        name: text_tokenizer.convert_tokens_to_ids(entry.special_tokens[name]) for name in converter.new_special_tokens
    }
    text_config = llama_text_config(original_config, converter.method_config_keys)
    vision_config = tower_config(vision_tower, original_config)
    name = checkpoint_name(checkpoint, original_config)
    fields = {
        **converter.config_fields(original_config, state_dict, text_config, vision_config, name, **options),
        **(config_overrides or {}),
    }
    # Tokens only this checkpoint's configuration uses (Osprey's <mask>, which had no embedding row of its own) too.
    optional = {key: token for key, token in entry.special_tokens_for(fields).items() if key not in token_ids}
    text_tokenizer.add_tokens(list(optional.values()), special_tokens=True)
    token_ids |= {key: text_tokenizer.convert_tokens_to_ids(token) for key, token in optional.items()}
    config = entry.config_class(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        **token_ids,
        **fields,
    )
    model = assemble(entry.for_generation_class, config, state_dict, vision_tower)
    processor = entry.processor_class.from_config(
        model.config, text_tokenizer, **converter.processor_kwargs(model.config, text_tokenizer)
    )
    finish_and_save(model, processor, text_tokenizer, output, resolve_dtype(dtype, state_dict))
    return output
