"""Configuration of TokenPacker (Li et al., 2024): coarse-to-fine point queries with region-to-point attention."""

from __future__ import annotations

from ..tiling import TILE_GRIDS
from .base import CompressedVLMConfig


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
