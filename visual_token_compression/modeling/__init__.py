from .base import (
    CompressedVLMCausalLMOutputWithPast,
    CompressedVLMForConditionalGeneration,
    CompressedVLMModel,
    CompressedVLMModelOutputWithPast,
    CompressedVLMPreTrainedModel,
)
from .quecc import QueCCCompressor, QueCCForConditionalGeneration, QueCCModel
from .setok import SeTokCompressor, SeTokForConditionalGeneration, SeTokModel
from .tokenpacker import TokenPackerCompressor, TokenPackerForConditionalGeneration, TokenPackerModel
from .vision import VisionFeatures, select_vision_features
from .visionzip import VisionZipCompressor, VisionZipForConditionalGeneration, VisionZipModel
from .voco_cache import VoCoCache
from .voco_llama import VoCoLlamaForConditionalGeneration, VoCoLlamaModel, VoCoLlamaProjector

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
__all__ += ["QueCCCompressor", "QueCCForConditionalGeneration", "QueCCModel"]
__all__ += ["SeTokCompressor", "SeTokForConditionalGeneration", "SeTokModel"]
__all__ += ["VoCoCache", "VoCoLlamaForConditionalGeneration", "VoCoLlamaModel", "VoCoLlamaProjector"]
__all__ += ["VisionZipCompressor", "VisionZipForConditionalGeneration", "VisionZipModel"]
