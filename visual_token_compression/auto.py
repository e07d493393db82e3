"""Registration of every model type with the transformers Auto classes, in one place: importing the package runs
`register_all`. The registry itself (`MODEL_TYPES`) is data in `registry.py`; this module is the facade that hands it
to transformers."""

from __future__ import annotations

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .compat import TRANSFORMERS_V5
from .configuration.base import CompressedVLMConfig
from .registry import MODEL_TYPES, ModelType, model_type_of
from .remote_code import write_remote_code
from .save_hooks import register_after_save

__all__ = ["MODEL_TYPES", "ModelType", "model_type_of", "register_all"]


def write_remote_code_after_save(obj, folder) -> None:
    """`save_pretrained` hook: every folder a model or processor of this package saves is Hub-ready."""
    entry = model_type_of(obj)
    if entry is not None:
        write_remote_code(folder, entry, None if isinstance(obj, transformers.PreTrainedModel) else obj)


def register_v5_tokenizer_name() -> None:
    """4.57: resolve the class name 5.x wrote into folders saved before `compat.write_portable_tokenizer_class`
    existed. 5.x saves a generic fast tokenizer as `TokenizersBackend`, a class 4.57 lacks; there it is
    `PreTrainedTokenizerFast`, so a subclass of that name is registered for AutoTokenizer to find."""
    if TRANSFORMERS_V5:
        return
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    alias = type("TokenizersBackend", (PreTrainedTokenizerFast,), {"__doc__": register_v5_tokenizer_name.__doc__})
    AutoTokenizer.register(CompressedVLMConfig, fast_tokenizer_class=alias, exist_ok=True)


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
            AutoImageProcessor.register(
                entry.config_class, slow_image_processor_class=entry.image_processor_class, exist_ok=True
            )
    register_v5_tokenizer_name()
    register_after_save(write_remote_code_after_save)


register_all()
