"""Registration of every model type with the transformers Auto classes, in one place.

`MODEL_TYPES` is the registry: one entry per method, with its config, model, generation model and processor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .compat import register_v5_names
from .configuration import CompressedVLMConfig, TokenPackerConfig
from .configuration.quecc import QueCCConfig
from .configuration.setok import SeTokConfig
from .configuration.voco_llama import VoCoLlamaConfig
from .modeling import CompressedVLMForConditionalGeneration, CompressedVLMModel
from .modeling.quecc import QueCCForConditionalGeneration, QueCCModel
from .modeling.setok import SeTokForConditionalGeneration, SeTokModel
from .modeling.tokenpacker import TokenPackerForConditionalGeneration, TokenPackerModel
from .modeling.voco_llama import VoCoLlamaForConditionalGeneration, VoCoLlamaModel
from .processing import CompressedVLMProcessor, TokenPackerProcessor
from .processing.quecc import QueCCProcessor
from .processing.setok import SeTokProcessor
from .processing.tokenpacker_hd import TokenPackerImageProcessor
from .processing.voco_llama import VoCoLlamaProcessor
from .remote_code import write_remote_code
from .save_hooks import register_after_save


@dataclass(frozen=True)
class ModelType:
    config_class: type[CompressedVLMConfig]
    model_class: type[CompressedVLMModel]
    for_generation_class: type[CompressedVLMForConditionalGeneration]
    processor_class: type[CompressedVLMProcessor]
    # Config overrides that make the method fit `tiny.py`'s 32-wide towers and LLMs (tests, demo).
    tiny_config_kwargs: dict = field(default_factory=dict)
    # Special tokens besides `<image>` the method adds to an LLM's tokenizer: config field -> token.
    special_tokens: dict = field(default_factory=dict)
    # This package's image processor the method may use (TokenPacker-HD's tiler), registered and bundled with it.
    image_processor_class: type | None = None


MODEL_TYPES: dict[str, ModelType] = {
    "setok": ModelType(
        SeTokConfig,
        SeTokModel,
        SeTokForConditionalGeneration,
        SeTokProcessor,
        # On the 32-wide towers the original's threshold 0.55 leaves one cluster per image. These give 2 to 14 on the
        # contract tests' noise images (CLIP and SigLIP), so unfilled slots get padded, with every score at least
        # 8e-4 from the threshold: rounding noise cannot change a count.
        tiny_config_kwargs={"k": 6, "fallback_num_tokens": 6, "threshold": 0.45},
    ),
    "quecc": ModelType(QueCCConfig, QueCCModel, QueCCForConditionalGeneration, QueCCProcessor),
    "voco_llama": ModelType(
        VoCoLlamaConfig,
        VoCoLlamaModel,
        VoCoLlamaForConditionalGeneration,
        VoCoLlamaProcessor,
        special_tokens={"voco_token_id": "<voco>"},
    ),
    "tokenpacker": ModelType(
        TokenPackerConfig,
        TokenPackerModel,
        TokenPackerForConditionalGeneration,
        TokenPackerProcessor,
        tiny_config_kwargs={"compressor_head_dim": 8},
        image_processor_class=TokenPackerImageProcessor,
    ),
}


def model_type_of(obj) -> ModelType | None:
    """The entry of a model (by its config's model_type) or of a processor (by its class) of this package."""
    if isinstance(obj, transformers.PreTrainedModel):
        return MODEL_TYPES.get(getattr(obj.config, "model_type", None))
    exact = [entry for entry in MODEL_TYPES.values() if type(obj) is entry.processor_class]
    subclass = [entry for entry in MODEL_TYPES.values() if isinstance(obj, entry.processor_class)]
    return (exact or subclass or [None])[0]


def write_remote_code_after_save(obj, folder) -> None:
    """`save_pretrained` hook: every folder a model or processor of this package saves is Hub-ready."""
    entry = model_type_of(obj)
    if entry is not None:
        write_remote_code(folder, entry, None if isinstance(obj, transformers.PreTrainedModel) else obj)


def register_all() -> None:
    # AutoModelForVision2Seq is deprecated in 4.57 and gone in 5.x.
    generation_autos = [AutoModelForImageTextToText]
    if getattr(transformers, "AutoModelForVision2Seq", None) is not None:
        generation_autos.append(transformers.AutoModelForVision2Seq)
    for name, entry in MODEL_TYPES.items():
        AutoConfig.register(name, entry.config_class, exist_ok=True)
        AutoModel.register(entry.config_class, entry.model_class, exist_ok=True)
        for auto_class in generation_autos:
            auto_class.register(entry.config_class, entry.for_generation_class, exist_ok=True)
        AutoProcessor.register(entry.config_class, entry.processor_class, exist_ok=True)
        # TokenPacker-HD's tiler, so a saved processor finds it by its `image_processor_type`.
        if entry.image_processor_class is not None:
            transformers.AutoImageProcessor.register(
                entry.config_class, slow_image_processor_class=entry.image_processor_class, exist_ok=True
            )
    register_v5_names()
    register_after_save(write_remote_code_after_save)


register_all()
