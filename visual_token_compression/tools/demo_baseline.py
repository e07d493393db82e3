"""The demo's uncompressed baseline: transformers' `LlavaForConditionalGeneration` (every patch into the LLM), built
from the same tower and LLM as the compressed model and trained by the same two stages on the same data.

`vtc train` composes only this package's model types, so the baseline runs the same `Trainer`, collator and
per-stage optimiser defaults here, with LLaVA's projector in the compressor's place.
"""

from __future__ import annotations

from transformers import HfArgumentParser, LlavaConfig, LlavaForConditionalGeneration, Trainer, TrainingArguments

from ..processing import CompressedVLMProcessor
from .building import load_language_model, load_vision_tower, reuse_parts
from .training.data import CompressedVLMDataCollator, load_training_dataset
from .training.train import with_stage_defaults

# What each stage updates, as `training.policies.STAGE_TRAINABLE` with LLaVA's projector as the compressor.
STAGE_TRAINABLE = {
    1: ("model.multi_modal_projector.",),
    2: ("model.multi_modal_projector.", "model.language_model.", "lm_head."),
}


def compose_llava(vision_tower: str, language_model: str, vision_feature_layer: int = -2):
    """(LLaVA-1.5 model, processor) around the given tower and LLM folders: a fresh projector, every patch kept,
    read at the tower's `vision_feature_layer` (LLaVA-1.5's -2 unless the compressed model reads another).

    The processor is this package's, told that an image takes all of the tower's patches, so that prompts and
    training batches are laid out exactly as for the compressed models.
    """
    tower = load_vision_tower(vision_tower)
    llm, tokenizer = load_language_model(language_model)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    grid = tower.config.image_size // tower.config.patch_size
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=llm.config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=grid**2,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    reuse_parts(model, tower, llm, tokenizer)
    return model, CompressedVLMProcessor.from_config(config, tokenizer)


def train_llava_stage(model, processor, stage: int, data: str, image_folder: str, training_flags: list[str]):
    """One stage with `vtc train`'s collator, template and optimiser defaults; `training_flags` are the
    `TrainingArguments` flags the compressed model's stage gets."""
    flags = with_stage_defaults(["--stage", str(stage), *training_flags])[2:]
    (arguments,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(flags)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(STAGE_TRAINABLE[stage]))
    collator = CompressedVLMDataCollator(
        processor, template="plain" if stage == 1 else "vicuna_v1", image_folder=image_folder
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=load_training_dataset(data), data_collator=collator)
    trainer.train()
    return model.eval()
