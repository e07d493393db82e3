from .base import CompressedVLMConfig
from .quecc import QueCCConfig
from .setok import SeTokConfig
from .tokenpacker import TokenPackerConfig
from .voco_llama import VoCoLlamaConfig

__all__ = ["CompressedVLMConfig", "TokenPackerConfig"]
__all__ += ["QueCCConfig"]
__all__ += ["SeTokConfig"]
__all__ += ["VoCoLlamaConfig"]
