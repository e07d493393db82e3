"""TokenPacker's processor: one padded view per image, or TokenPacker-HD's tiles laid out with text separators."""

from __future__ import annotations

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.tokenization_utils_base import TextInput

from .base import CompressedVLMProcessor, build_image_processor
from .regions import image_regions
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
        mask_token: the token a region takes in the text (TokenPacker-HD with Osprey's region extractor), when the
            tokenizer has it.

    Regions (HD with a region extractor): `region_masks=` holds one entry per image, the list of its regions (binary
    masks, `[x1, y1, x2, y2]` boxes, COCO polygons or RLE; see `processing.regions.region_mask`), or None. Each is put
    on the image's tile canvas exactly as the image is, and `region_masks` is returned as a list with one bool
    (regions, rows * tile, cols * tile) tensor per image. The i-th `<mask>` of a text takes the i-th region of its
    images, so every text must hold as many `<mask>` tokens as its images have regions.
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
        mask_token: str = "<mask>",
        **kwargs,
    ):
        self.tile_separator = tile_separator
        self.row_separator = row_separator
        self.mask_token = mask_token
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
        has_mask = mask_token in tokenizer.get_vocab()
        self.mask_token_id = tokenizer.convert_tokens_to_ids(mask_token) if has_mask else None

    @classmethod
    def from_config(cls, config, tokenizer, image_processor=None, **kwargs):
        """Plain TokenPacker, or HD with tiles of the tower's image size when `config.patch_num` is set. With the
        region extractor, `<mask>` is added to the tokenizer when it lacks it and must have the model's id."""
        if getattr(config, "use_region_extractor", False):
            mask_token = kwargs.setdefault("mask_token", "<mask>")
            if mask_token not in tokenizer.get_vocab():
                tokenizer.add_tokens([mask_token], special_tokens=True)
            if tokenizer.convert_tokens_to_ids(mask_token) != config.mask_token_id:
                raise ValueError(
                    f"The tokenizer's {mask_token!r} has id {tokenizer.convert_tokens_to_ids(mask_token)} but the "
                    f"model's mask_token_id is {config.mask_token_id}; build the config from this tokenizer."
                )
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

    def __call__(
        self, images: ImageInput | None = None, text: TextInput | list[TextInput] | None = None, **kwargs
    ) -> BatchFeature:
        """As the base processor's, plus `region_masks=` (flat, in `images_kwargs` or in `processor_kwargs`, as
        `apply_chat_template` and `pipeline` pass them)."""
        kwargs.update(kwargs.pop("processor_kwargs", None) or {})
        region_masks = kwargs.pop("region_masks", None)
        if isinstance(kwargs.get("images_kwargs"), dict) and "region_masks" in kwargs["images_kwargs"]:
            if region_masks is not None:
                raise ValueError("region_masks was given twice: flat and in images_kwargs.")
            kwargs["images_kwargs"] = dict(kwargs["images_kwargs"])
            region_masks = kwargs["images_kwargs"].pop("region_masks")
        outputs = super().__call__(images=images, text=text, **kwargs)
        texts = [text] if isinstance(text, str) else list(text)
        mask_tokens = [sample.count(self.mask_token) if self.mask_token_id is not None else 0 for sample in texts]
        if region_masks is None:
            if any(mask_tokens):
                raise ValueError(
                    f"The text holds {sum(mask_tokens)} {self.mask_token!r} tokens but no region_masks were given."
                )
            return outputs
        canvases = self.regions_on_canvases(region_masks, outputs.get("image_sizes"))
        first = 0
        for sample, (sample_text, tokens) in enumerate(zip(texts, mask_tokens, strict=True)):
            count = sample_text.count(self.image_token)
            regions = sum(len(canvas) for canvas in canvases[first : first + count])
            first += count
            if tokens != regions:
                raise ValueError(
                    f"Sample {sample} holds {tokens} {self.mask_token!r} tokens but its images have {regions} "
                    "region masks: write one token per region, in the order of the regions."
                )
        tensors = isinstance(outputs["input_ids"], torch.Tensor)
        outputs["region_masks"] = canvases if tensors else [canvas.numpy() for canvas in canvases]
        return outputs

    def regions_on_canvases(self, region_masks, image_sizes) -> list[torch.Tensor]:
        """Each image's regions decoded at its size and put on its tile canvas (see `regions_on_canvas`)."""
        if self.mask_token_id is None or not self.is_hd:
            raise ValueError(
                f"region_masks need TokenPacker-HD with a region extractor, whose tokenizer has {self.mask_token!r}: "
                "build the processor with TokenPackerProcessor.from_config from a config with use_region_extractor."
            )
        sizes = [] if image_sizes is None else np.asarray(image_sizes).tolist()
        if not isinstance(region_masks, (list, tuple)) or len(region_masks) != len(sizes):
            given = len(region_masks) if isinstance(region_masks, (list, tuple)) else type(region_masks).__name__
            raise ValueError(
                f"region_masks holds one entry per image (the list of its regions, or None): got {given} for "
                f"{len(sizes)} images."
            )
        return [
            self.image_processor.regions_on_canvas(image_regions(regions, height, width), height, width)
            for regions, (height, width) in zip(region_masks, sizes, strict=True)
        ]

    def _check_layout_kept(self, input_ids, texts: list[str]):
        super()._check_layout_kept(input_ids, texts)
        if self.mask_token_id is not None:
            self._check_token_kept(input_ids, texts, self.mask_token, self.mask_token_id)
