from .base import CompressedVLMProcessor, build_image_processor
from .chat_templates import VICUNA_V1
from .images import load_image
from .tokenpacker import TokenPackerProcessor

__all__ = ["VICUNA_V1", "CompressedVLMProcessor", "TokenPackerProcessor", "build_image_processor", "load_image"]
