"""Configuration of TokenPacker (Li et al., 2024): coarse-to-fine point queries with region-to-point attention."""

from __future__ import annotations

import copy

from ..tiling import TILE_GRIDS
from .base import CompressedVLMConfig, default_multi_level_layers


class TokenPackerConfig(CompressedVLMConfig):
    """TokenPacker: each view's G x G patch grid becomes (G / scale_factor)^2 tokens.

    Defaults reproduce the released models (CLIP-L/14-336, layers [12, 16, 22, 23] multi-level, -2 single-level,
    8 heads of 128, 576 -> 144 tokens).

    Args:
        scale_factor: downsampling per side (2, 3, 4 released: 144, 64, 36 tokens). Must divide the patch grid.
        compressor_hidden_size: width of the queries/keys/values inside the packer; `None` uses the vision width
            (the original's 1024).
        compressor_head_dim: width of one attention head (128 in the original, so 8 heads at width 1024).
        compressor_num_heads: overrides the head count; `None` gives `compressor_hidden_size // compressor_head_dim`.
        layer_norm_eps: epsilon of the q/k/v LayerNorms (1e-6 in the original).
        patch_num: turns TokenPacker-HD on: the most tiles per image (9, 16 or 25). `None` is plain TokenPacker,
            one padded view per image. The model is the same either way; the processor slices the images.
        use_region_extractor: TokenPacker-HD with Osprey's region extractor: every `<mask>` token of the text is
            filled with the pooled features of one region mask (needs `patch_num`).
        region_feature_layers: the tower layers pooled inside each mask; `None` gives the original's
            [12, 16, 22, 23] for a 24-layer tower (the same relative depths for others).
        mask_token_id: id of `<mask>` in the tokenizer and the LLM's embeddings. `None` with the region extractor
            adds `<mask>` as a new token right after the LLM's vocabulary (and after `<image>` when that is there):
            the vocabulary grows by one row. Like `image_token_id` it may lie past `text_config.vocab_size` when
            the embeddings are resized afterwards.
    """

    model_type = "tokenpacker"

    def __init__(
        self,
        scale_factor: int = 2,
        compressor_hidden_size: int | None = None,
        compressor_head_dim: int = 128,
        compressor_num_heads: int | None = None,
        layer_norm_eps: float = 1e-6,
        patch_num: int | None = None,
        use_region_extractor: bool = False,
        region_feature_layers: list[int] | None = None,
        mask_token_id: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if scale_factor < 1 or self.vision_grid_size % scale_factor != 0:
            raise ValueError(
                f"scale_factor={scale_factor} must divide the vision grid of {self.vision_grid_size} patches per side "
                f"(image_size {self.vision_config.image_size} / patch_size {self.vision_config.patch_size})."
            )
        self.scale_factor = scale_factor
        self.compressor_hidden_size = compressor_hidden_size or self.vision_config.hidden_size
        if compressor_num_heads is None:
            if self.compressor_hidden_size % compressor_head_dim != 0:
                raise ValueError(
                    f"compressor_hidden_size={self.compressor_hidden_size} is not a multiple of "
                    f"compressor_head_dim={compressor_head_dim}; set compressor_num_heads explicitly."
                )
            compressor_num_heads = self.compressor_hidden_size // compressor_head_dim
        if compressor_num_heads < 1 or self.compressor_hidden_size % compressor_num_heads != 0:
            raise ValueError(
                f"compressor_num_heads={compressor_num_heads} must divide compressor_hidden_size="
                f"{self.compressor_hidden_size}."
            )
        self.compressor_head_dim = self.compressor_hidden_size // compressor_num_heads
        self.compressor_num_heads = compressor_num_heads
        self.layer_norm_eps = layer_norm_eps
        if patch_num is not None and patch_num not in TILE_GRIDS:
            raise ValueError(f"patch_num={patch_num} is not supported: TokenPacker-HD defines 9, 16 and 25 (or None).")
        self.patch_num = patch_num
        self.use_region_extractor = bool(use_region_extractor)
        if region_feature_layers is None:
            region_feature_layers = default_multi_level_layers(self.vision_config.num_hidden_layers)
        self.region_feature_layers = list(region_feature_layers)
        self.mask_token_id = self._region_token(mask_token_id) if self.use_region_extractor else mask_token_id

    def _region_token(self, mask_token_id: int | None) -> int:
        """Checks the region extractor's settings; returns `<mask>`'s id (a new row of the vocabulary for `None`)."""
        if self.patch_num is None:
            raise ValueError(
                "use_region_extractor needs TokenPacker-HD (set patch_num to 9, 16 or 25): regions are pooled over "
                "the stitched tiles of an image."
            )
        if not self.region_feature_layers:
            raise ValueError("region_feature_layers is empty: the region extractor pools at least one tower layer.")
        num_layers = self.vision_config.num_hidden_layers
        for layer in self.region_feature_layers:
            if not -(num_layers + 1) <= layer <= num_layers:
                raise ValueError(
                    f"Region feature layer {layer} does not exist: the vision tower has {num_layers} layers "
                    f"(hidden_states indices -{num_layers + 1}..{num_layers})."
                )
        if mask_token_id is None:
            # A private copy, so that growing the vocabulary never changes a config object the caller still holds.
            self.text_config = copy.deepcopy(self.text_config)
            mask_token_id = max(self.text_config.vocab_size, (self.image_token_id or -1) + 1)
            self.text_config.vocab_size = mask_token_id + 1
        if mask_token_id < 0 or mask_token_id == self.image_token_id:
            raise ValueError(
                f"mask_token_id={mask_token_id} must be a token id of its own, not <image>'s ({self.image_token_id})."
            )
        return mask_token_id

    @property
    def compressed_grid_size(self) -> int:
        return self.vision_grid_size // self.scale_factor

    @property
    def image_seq_length(self) -> int:
        """Placeholder tokens one image takes in the LLM sequence: (grid / scale_factor)^2."""
        return self.compressed_grid_size**2

    def visual_token_budget(self) -> dict[str, str]:
        """HD: a separator after each view and up to `patch_num` tiles plus a global view per image."""
        if self.patch_num is None:
            return super().visual_token_budget()
        tower, per_view = self.vision_grid_size**2, self.image_seq_length
        most = (per_view + 1) * (self.patch_num + 1)
        return {
            "tokens_per_image": f"{per_view} per view plus one separator; {per_view + 1} to {most} per image",
            "compression_ratio": f"{tower / per_view:g}x per view ({tower} -> {per_view})",
            "token_note": f"High resolution: each image is cut into at most {self.patch_num} tiles of "
            f"{self.vision_config.image_size} px, plus a global view when there are several tiles.",
        }
