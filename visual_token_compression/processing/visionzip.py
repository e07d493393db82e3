from .base import CompressedVLMProcessor


class VisionZipProcessor(CompressedVLMProcessor):
    """VisionZip: LLaVA-1.5's text layout with one padded view and `dominant_tokens + contextual_tokens`
    placeholders per image (the config's `image_seq_length`), where LLaVA-1.5 writes 576."""
