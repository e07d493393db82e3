from .base import CompressedVLMProcessor


class TokenPackerProcessor(CompressedVLMProcessor):
    """Plain TokenPacker: one padded view per image, (grid / scale_factor)^2 placeholders each."""
