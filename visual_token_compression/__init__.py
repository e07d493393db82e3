"""Visual-token compressors as first-class transformers models. Importing this package registers them."""

from . import auto
from .auto import MODEL_TYPES
from .configuration import CompressedVLMConfig, TokenPackerConfig
from .modeling import (
    CompressedVLMForConditionalGeneration,
    CompressedVLMModel,
    CompressedVLMPreTrainedModel,
    TokenPackerForConditionalGeneration,
    TokenPackerModel,
)
from .processing import CompressedVLMProcessor, TokenPackerProcessor

__version__ = "0.1.0"

__all__ = [
    "MODEL_TYPES",
    "CompressedVLMConfig",
    "CompressedVLMForConditionalGeneration",
    "CompressedVLMModel",
    "CompressedVLMPreTrainedModel",
    "CompressedVLMProcessor",
    "TokenPackerConfig",
    "TokenPackerForConditionalGeneration",
    "TokenPackerModel",
    "TokenPackerProcessor",
    "auto",
]
