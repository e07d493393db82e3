"""TokenPacker's processor: one padded view per image, or TokenPacker-HD's tiles laid out with text separators."""

from __future__ import annotations

from .base import CompressedVLMProcessor, build_image_processor
from .tokenpacker_hd import TokenPackerImageProcessor


class TokenPackerProcessor(CompressedVLMProcessor):
    """Plain TokenPacker (one padded view, q = (grid / scale_factor)^2 placeholders per image) or, with a
    `TokenPackerImageProcessor`, TokenPacker-HD.

    In HD each image becomes rows x cols tiles plus a global view when there are several tiles. The layout the
    original builds from embeddings is written here as text, so the model only fills placeholders in order:
    each view is q placeholders followed by one separator: `tile_separator` between the tiles of a row,
    `row_separator` after each row and after the global view. An image takes (q + 1) * views tokens.

    Args:
        tile_separator: text between the tiles of a row (',' as in the original).
        row_separator: text after each row and after the global view. '\\n' is a real newline; the released
            Vicuna checkpoints saw the `<unk>` embedding there (the original's `convert_tokens_to_ids('\\n')`
            is unk for LLaMA vocabularies), which `row_separator="<unk>"` reproduces.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        image_seq_length: int | None = None,
        tile_separator: str = ",",
        row_separator: str = "\n",
        **kwargs,
    ):
        self.tile_separator = tile_separator
        self.row_separator = row_separator
        super().__init__(
            image_processor,
            tokenizer,
            chat_template=chat_template,
            image_token=image_token,
            image_seq_length=image_seq_length,
            **kwargs,
        )
        if self.is_hd:
            if image_seq_length is None:
                raise ValueError("TokenPacker-HD needs image_seq_length, the tokens of one view.")
            for name, separator in (("tile_separator", tile_separator), ("row_separator", row_separator)):
                # Checked where it is written, between placeholders: some tokenizers add a prefix space there.
                ids = tokenizer(image_token + separator + image_token, add_special_tokens=False)["input_ids"][1:-1]
                if len(ids) != 1 or ids[0] == self.image_token_id:
                    raise ValueError(
                        f"{name}={separator!r} must be exactly one text token between two {image_token!r} tokens, "
                        f"but the tokenizer gives {ids}."
                    )

    @classmethod
    def from_config(cls, config, tokenizer, image_processor=None, **kwargs):
        """Plain TokenPacker, or HD with tiles of the tower's image size when `config.patch_num` is set."""
        if image_processor is None and getattr(config, "patch_num", None) is not None:
            plain = build_image_processor(config.vision_config)  # the same normalisation as plain TokenPacker
            image_processor = TokenPackerImageProcessor(
                patch_num=config.patch_num,
                tile_size=config.vision_config.image_size,
                image_mean=plain.image_mean,
                image_std=plain.image_std,
            )
        return super().from_config(config, tokenizer, image_processor=image_processor, **kwargs)

    @property
    def is_hd(self) -> bool:
        return isinstance(self.image_processor, TokenPackerImageProcessor)

    def image_token_counts(self, image_sizes: list[tuple[int, int]]) -> list[int]:
        if not self.is_hd:
            return super().image_token_counts(image_sizes)
        return [(self.image_seq_length + 1) * self.image_processor.num_views(h, w) for h, w in image_sizes]

    def num_views(self, image_size: tuple[int, int]) -> int:
        return self.image_processor.num_views(*image_size) if self.is_hd else 1

    def image_text(self, image_size: tuple[int, int]) -> str:
        """Plain: q placeholders. HD: the image's grid of views with separators, global view last."""
        if not self.is_hd:
            return super().image_text(image_size)
        rows, cols = self.image_processor.grid(*image_size)
        view = self.image_token * self.image_seq_length
        layout = (self.tile_separator.join([view] * cols) + self.row_separator) * rows
        if rows * cols > 1:
            layout += view + self.row_separator
        return layout
