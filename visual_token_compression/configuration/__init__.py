from .base import CompressedVLMConfig
from .tokenpacker import TokenPackerConfig

__all__ = ["CompressedVLMConfig", "TokenPackerConfig"]
