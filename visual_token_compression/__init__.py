"""Visual-token compressors as first-class transformers models. Importing this package registers them.

The model code (`configuration`, `modeling`, `processing`, the `registry` and its registration in `auto`) is what a
saved model needs; `tools` holds what is built on it (`vtc` and its demo, training, conversion, benchmarks, Hub
publishing, tiny test models), and is imported only where used.
"""

from . import auto
from .configuration import CompressedVLMConfig, TokenPackerConfig
from .configuration.quecc import QueCCConfig
from .configuration.setok import SeTokConfig
from .configuration.visionzip import VisionZipConfig
from .configuration.voco_llama import VoCoLlamaConfig
from .modeling import (
    CompressedVLMForConditionalGeneration,
    CompressedVLMModel,
    CompressedVLMPreTrainedModel,
    TokenPackerForConditionalGeneration,
    TokenPackerModel,
)
from .modeling.quecc import QueCCForConditionalGeneration, QueCCModel
from .modeling.setok import SeTokForConditionalGeneration, SeTokModel
from .modeling.visionzip import VisionZipForConditionalGeneration, VisionZipModel
from .modeling.voco_llama import VoCoLlamaForConditionalGeneration, VoCoLlamaModel
from .processing import CompressedVLMProcessor, TokenPackerProcessor
from .processing.quecc import QueCCProcessor
from .processing.setok import SeTokProcessor
from .processing.tokenpacker_hd import TokenPackerImageProcessor
from .processing.visionzip import VisionZipProcessor
from .processing.voco_llama import VoCoLlamaProcessor
from .registry import MODEL_TYPES

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
__all__ += ["QueCCConfig", "QueCCForConditionalGeneration", "QueCCModel", "QueCCProcessor"]
__all__ += ["SeTokConfig", "SeTokForConditionalGeneration", "SeTokModel", "SeTokProcessor"]
__all__ += ["VoCoLlamaConfig", "VoCoLlamaForConditionalGeneration", "VoCoLlamaModel", "VoCoLlamaProcessor"]
__all__ += ["TokenPackerImageProcessor"]
__all__ += ["VisionZipConfig", "VisionZipForConditionalGeneration", "VisionZipModel", "VisionZipProcessor"]
