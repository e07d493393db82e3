from .base import CompressedVLMProcessor, build_image_processor
from .chat_templates import VICUNA_V1
from .images import load_image
from .quecc import QueCCProcessor
from .setok import SeTokProcessor
from .tokenpacker import TokenPackerProcessor
from .tokenpacker_hd import TokenPackerImageProcessor
from .visionzip import VisionZipProcessor
from .voco_llama import VoCoLlamaProcessor

__all__ = ["VICUNA_V1", "CompressedVLMProcessor", "TokenPackerProcessor", "build_image_processor", "load_image"]
__all__ += ["QueCCProcessor"]
__all__ += ["SeTokProcessor"]
__all__ += ["VoCoLlamaProcessor"]
__all__ += ["TokenPackerImageProcessor"]
__all__ += ["VisionZipProcessor"]
