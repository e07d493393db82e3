"""TokenPacker (Li et al., 2024, arXiv 2407.02392): point queries from a downsampled grid attend to their region."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin

from ..configuration.tokenpacker import TokenPackerConfig
from ..tiling import choose_grid, views_of_grid
from .base import CompressedVLMForConditionalGeneration, CompressedVLMModel
from .layers import GeluMLP, LocalCrossAttention, grid_windows
from .vision import VisionFeatures


class TokenPackerCompressor(nn.Module):
    """576 patch features -> (24/s)^2 tokens at the LLM width.

    Keys/values come from the multi-level features at full resolution; each query is the single-level grid
    resized by bilinear interpolation (not pooling: for s=3 it is the block's centre pixel, as in the original)
    and attends only to the s x s region it covers. There is no residual: attention output goes straight into
    the MLP, as in the original's Algorithm 2.
    """

    def __init__(self, config: TokenPackerConfig):
        super().__init__()
        vision_width = config.vision_config.hidden_size
        multi_level_width = vision_width * len(config.multi_level_feature_layers)
        width = config.compressor_hidden_size
        self.raw_grid = config.vision_grid_size
        self.scale_factor = config.scale_factor
        self.grid = config.compressed_grid_size

        self.query_proj = nn.Linear(vision_width, width, bias=False)
        self.key_mlp = GeluMLP(multi_level_width, width, width)
        self.value_mlp = GeluMLP(multi_level_width, width, width)
        self.query_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.key_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.value_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attn = LocalCrossAttention(config, width, config.compressor_num_heads)
        self.out_mlp = GeluMLP(width, config.text_config.hidden_size, config.text_config.hidden_size)

    def point_queries(self, single_level: torch.Tensor) -> torch.Tensor:
        """Bilinear resize of the raw single-level grid to G x G, in fp32 as the original, then projected."""
        views, _, channels = single_level.shape
        grid = single_level.reshape(views, self.raw_grid, self.raw_grid, channels).permute(0, 3, 1, 2)
        resized = F.interpolate(grid.float(), size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        resized = resized.to(single_level.dtype).permute(0, 2, 3, 1).reshape(views, self.grid**2, channels)
        return self.query_norm(self.query_proj(resized))

    def forward(self, features: VisionFeatures) -> torch.Tensor:
        if features.multi_level is None:
            raise ValueError("TokenPacker needs multi-level vision features (config.multi_level_feature_layers).")
        views = features.single_level.shape[0]
        if features.single_level.shape[1] != self.raw_grid**2:
            raise ValueError(
                f"TokenPacker expects {self.raw_grid**2} patches per view ({self.raw_grid}x{self.raw_grid}), "
                f"got {features.single_level.shape[1]}."
            )
        keys = grid_windows(self.key_norm(self.key_mlp(features.multi_level)), self.grid, self.scale_factor)
        values = grid_windows(self.value_norm(self.value_mlp(features.multi_level)), self.grid, self.scale_factor)
        queries = self.point_queries(features.single_level).reshape(views * self.grid**2, 1, -1)
        packed = self.attn(queries, keys, values).reshape(views, self.grid**2, -1)
        return self.out_mlp(packed)


class TokenPackerModel(CompressedVLMModel):
    config_class = TokenPackerConfig
    compressor_class = TokenPackerCompressor

    def views_per_image(self, num_views: int, image_sizes: torch.Tensor | None) -> list[int]:
        """TokenPacker-HD: each image's tiles (+ global view), from its size as the image processor chose them."""
        if self.config.patch_num is None:
            return super().views_per_image(num_views, image_sizes)
        if image_sizes is None:
            raise ValueError(
                "TokenPacker-HD needs image_sizes (each image's height and width, as TokenPackerProcessor returns "
                "them) to tell which views belong to which image."
            )
        tile_size = self.config.vision_config.image_size
        counts = []
        for height, width in image_sizes.tolist():
            counts.append(views_of_grid(*choose_grid(height, width, self.config.patch_num, tile_size)))
        if sum(counts) != num_views:
            raise ValueError(
                f"image_sizes give {sum(counts)} views ({counts} per image) but pixel_values holds {num_views}."
            )
        return counts


class TokenPackerForConditionalGeneration(CompressedVLMForConditionalGeneration, GenerationMixin):
    config_class = TokenPackerConfig
    model_class = TokenPackerModel
