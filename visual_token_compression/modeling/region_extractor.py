"""TokenPacker-HD's region extractor (Osprey's `MaskExtractor`): one LLM token per region mask, pooled from several
tower layers over the stitched tiles of its image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

from ..configuration.tokenpacker import TokenPackerConfig

logger = logging.get_logger(__name__)

# The original's denominator guard: an empty (or vanished) mask pools to exactly zero.
POOLING_EPS = 1e-8


def cell_masks(masks: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """(regions, H, W) pixel masks -> (regions, rows, cols) bool masks on the patch grid, as the original.

    A bilinear resize (`align_corners=False`, no antialias) then `> 0`: with `patch_size` pixels per cell this samples
    each cell's centre pixels only (any of the 2 x 2 centre pixels for an even patch size), so a mask that covers
    no cell centre vanishes and a cell at a mask's edge counts fully.
    """
    masks = masks.float()
    if tuple(masks.shape[-2:]) != tuple(cells) and masks.shape[0] > 0:
        masks = F.interpolate(masks[None], size=cells, mode="bilinear", align_corners=False)[0]
    return masks > 0


class RegionExtractor(nn.Module):
    """Region masks on an image's tile canvas -> one vector at the LLM width per mask.

    For each image the tiles of every pooled layer are stitched into one (rows * G, cols * G) map (its global view,
    if any, is skipped), each mask is reduced to that grid by `cell_masks` and averaged over its cells, one linear
    layer per level maps the averages, their sum goes through `feat_linear` to the LLM width. All of it runs in fp32
    (upcast copies of the weights, never an in-place cast), as the original's computation did.

    The submodule names are the original's (`res_layers.{k}`, `feat_linear`), so its weights load by a prefix rename.
    """

    def __init__(self, config: TokenPackerConfig):
        super().__init__()
        width = config.vision_config.hidden_size
        self.grid = config.vision_grid_size
        self.tile_size = config.vision_config.image_size
        self.res_layers = nn.ModuleList(nn.Linear(width, width) for _ in config.region_feature_layers)
        self.feat_linear = nn.Linear(width, config.text_config.hidden_size)

    def canvas_grid(self, masks: torch.Tensor, image: int) -> tuple[int, int]:
        """(rows, cols) of tiles of an image, read from its masks' canvas, `tile_size` pixels per tile."""
        height, width = masks.shape[-2:]
        if masks.dim() != 3 or height % self.tile_size or width % self.tile_size or not height or not width:
            raise ValueError(
                f"Region masks of image {image} have shape {tuple(masks.shape)}: expected (regions, rows * "
                f"{self.tile_size}, cols * {self.tile_size}) masks on the image's tile canvas, as TokenPackerProcessor "
                "returns them."
            )
        return height // self.tile_size, width // self.tile_size

    def stitch(self, levels: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """(levels, rows * cols, G * G, width) tile features -> (levels, rows * G * cols * G, width), row-major."""
        num_levels, _, _, width = levels.shape
        grid = levels.view(num_levels, rows, cols, self.grid, self.grid, width).permute(0, 1, 3, 2, 4, 5)
        return grid.reshape(num_levels, rows * self.grid * cols * self.grid, width)

    def pool(self, stitched: torch.Tensor, masks: torch.Tensor, image: int) -> torch.Tensor:
        """The masked mean of every level inside every mask, (levels, regions, width), in fp32."""
        rows, cols = (side // self.tile_size * self.grid for side in masks.shape[-2:])
        cells = cell_masks(masks.to(stitched.device), (rows, cols)).flatten(1).float()
        for region in (cells.sum(-1) == 0).nonzero().flatten().tolist():
            logger.warning(
                "Region mask %d of image %d covers no patch centre of the %dx%d patch grid (empty, or thinner than a "
                "patch): its vector is the extractor's bias alone.",
                region,
                image,
                rows,
                cols,
            )
        weights = cells / (cells.sum(-1, keepdim=True) + POOLING_EPS)
        return torch.einsum("nk,lkw->lnw", weights, stitched.float())

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Per-level affine maps summed, then `feat_linear`: (levels, regions, width) -> (regions, out), fp32."""
        summed = sum(
            F.linear(level, layer.weight.float(), layer.bias.float())
            for level, layer in zip(pooled, self.res_layers, strict=True)
        )
        return F.linear(summed, self.feat_linear.weight.float(), self.feat_linear.bias.float())

    def forward(self, levels: list[torch.Tensor] | tuple[torch.Tensor, ...], region_masks) -> list[torch.Tensor]:
        """`levels`: one (views, G * G, width) tensor per pooled layer, the views of every image in order (tiles
        row-major, then the global view when there are several tiles). `region_masks`: per image, (regions, rows *
        tile_size, cols * tile_size) masks on its tile canvas. Returns per image a (regions, out) fp32 tensor."""
        if len(levels) != len(self.res_layers):
            raise ValueError(f"The region extractor pools {len(self.res_layers)} layers, got {len(levels)}.")
        stacked = torch.stack(list(levels))
        outputs, first_view = [], 0
        for image, masks in enumerate(region_masks):
            masks = torch.as_tensor(masks)
            rows, cols = self.canvas_grid(masks, image)
            tiles = stacked[:, first_view : first_view + rows * cols]
            first_view += rows * cols + (rows * cols > 1)
            if tiles.shape[1] != rows * cols:
                break  # reported below with the totals
            pooled = self.pool(self.stitch(tiles, rows, cols), masks, image)
            outputs.append(self.project(pooled))
        if first_view != stacked.shape[1]:
            raise ValueError(
                f"The region masks' canvases give {first_view} views for {len(region_masks)} images but the images have "
                f"{stacked.shape[1]} views: pass one entry of region masks per image, on its tile canvas."
            )
        return outputs
