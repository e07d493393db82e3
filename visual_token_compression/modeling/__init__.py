from .base import (
    CompressedVLMCausalLMOutputWithPast,
    CompressedVLMForConditionalGeneration,
    CompressedVLMModel,
    CompressedVLMModelOutputWithPast,
    CompressedVLMPreTrainedModel,
)
from .tokenpacker import TokenPackerCompressor, TokenPackerForConditionalGeneration, TokenPackerModel
from .vision import VisionFeatures, select_vision_features

__all__ = [
    "CompressedVLMCausalLMOutputWithPast",
    "CompressedVLMForConditionalGeneration",
    "CompressedVLMModel",
    "CompressedVLMModelOutputWithPast",
    "CompressedVLMPreTrainedModel",
    "TokenPackerCompressor",
    "TokenPackerForConditionalGeneration",
    "TokenPackerModel",
    "VisionFeatures",
    "select_vision_features",
]
