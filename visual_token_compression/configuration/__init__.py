from .base import CompressedVLMConfig
from .quecc import QueCCConfig
from .setok import SeTokConfig
from .tokenpacker import TokenPackerConfig
from .visionzip import VisionZipConfig
from .voco_llama import VoCoLlamaConfig

__all__ = ["CompressedVLMConfig", "TokenPackerConfig"]
__all__ += ["QueCCConfig"]
__all__ += ["SeTokConfig"]
__all__ += ["VoCoLlamaConfig"]
__all__ += ["VisionZipConfig"]
