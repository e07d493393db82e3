from .base import CompressedVLMProcessor


class SeTokProcessor(CompressedVLMProcessor):
    """SeTok: one padded view per image and `max_image_tokens` placeholders, an upper bound on its cluster count.

    The count is only known after the vision forward, so the model fills the last L placeholders and masks the
    others out (see `SeTokModel`); `_get_num_multimodal_tokens` reports the placeholders, i.e. the bound.
    """
