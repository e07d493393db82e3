"""TokenPacker-HD image slicing: pick a tile grid, letterbox the image into it, cut tiles, add a global view.

Reproduces the released models' preprocessing (`llava/patch_divide.py` and the `slice` block of `train.py` in
CircleRadon/TokenPacker): normalise, bilinear resize (no antialias) keeping the aspect ratio, zero padding on the
bottom/right, row-major tiles, and a global view made by resizing the *padded canvas*.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..tiling import TILE_GRIDS, choose_grid, views_of_grid
from .images import load_image


def fit_size(height: int, width: int, box_height: int, box_width: int) -> tuple[int, int]:
    """Aspect-preserving size inside a box, with the original's Python rounding.

    Deviation: each side is at least 1 pixel. The original rounds a thin side to 0 (e.g. 10000x1 images) and
    `F.interpolate` then raises.
    """
    scale_h, scale_w = box_height / height, box_width / width
    if scale_h <= scale_w:
        return box_height, max(1, min(box_width, round(width * scale_h)))
    return max(1, min(box_height, round(height * scale_w))), box_width


def _source_pixels(in_size: int, out_size: int):
    """Neighbour indices and weights of PyTorch's bilinear resize (align_corners=False, no antialias).

    PyTorch's CPU kernel computes `scale * (dst + 0.5) - 0.5` from a float32 scale with one rounding (fused
    multiply-add); doing it in float64 and rounding once gives its indices and weights (the results agree to
    about 1e-7, the order of the final sums).
    """
    scale = (torch.tensor(in_size, dtype=torch.float32) / out_size).double()
    source = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).float().clamp(min=0)
    first = source.long().clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    weight = (source - first).clamp(0, 1)
    return first.numpy(), second.numpy(), 1 - weight, weight


def resize_bilinear(image, size: tuple[int, int], to_float=lambda pixels: pixels) -> torch.Tensor:
    """`F.interpolate(mode='bilinear')` of a (C, H, W) tensor or array, reading only each output pixel's 4 neighbours.

    Memory is O(output) whatever the input size, so an 8000x8000 uint8 image is never expanded to float at full
    resolution. `to_float` maps gathered pixels to a float tensor (the normalisation, which commutes with the
    interpolation).
    """
    rows0, rows1, top, bottom = _source_pixels(image.shape[1], size[0])
    cols0, cols1, left, right = _source_pixels(image.shape[2], size[1])
    top, bottom = top[:, None], bottom[:, None]

    def gather(rows, cols):
        return to_float(image[:, rows[:, None], cols[None, :]])

    upper = left * gather(rows0, cols0) + right * gather(rows0, cols1)
    lower = left * gather(rows1, cols0) + right * gather(rows1, cols1)
    return top * upper + bottom * lower


def masks_on_canvas(masks: np.ndarray, rows: int, cols: int, tile_size: int) -> torch.Tensor:
    """(regions, height, width) masks -> bool masks on the rows x cols tile canvas of their image, as the original's
    datasets put them: nearest resize to the image's letterboxed size (`F.interpolate(mode='nearest')`, the floor of
    dst * in / out, run on uint8 as its COCO masks), at the top left, zeros elsewhere."""
    height, width = masks.shape[-2:]
    fitted_h, fitted_w = fit_size(height, width, rows * tile_size, cols * tile_size)
    canvas = torch.zeros(len(masks), rows * tile_size, cols * tile_size, dtype=torch.bool)
    if len(masks):
        resized = F.interpolate(torch.from_numpy(masks.astype(np.uint8))[None], (fitted_h, fitted_w), mode="nearest")
        canvas[:, :fitted_h, :fitted_w] = resized[0] != 0
    return canvas


class TokenPackerImageProcessor(BaseImageProcessor):
    """TokenPacker-HD's dynamic slicing: each image becomes rows x cols tiles (+ a global view when there are several).

    Args:
        patch_num: the most tiles per image, 9, 16 or 25 (picks the original's candidate grid list).
        tile_size: side of one tile, the vision tower's `image_size` (336 for the released CLIP-L/14-336).
        image_mean, image_std: normalisation applied before resizing, as in the original (CLIP's by default).
        do_rescale, rescale_factor: scaling of the pixel values before normalising (to [0, 1] by default); also
            call arguments, as for every transformers image processor.

    `pixel_values` holds the views of every image, concatenated on dim 0 in order: tiles row-major, then the
    global view. `image_sizes` (images, 2) holds each image's (height, width), as LLaVA-NeXT's: the model derives
    each image's views from it.
    """

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        patch_num: int = 9,
        tile_size: int = 336,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if patch_num not in TILE_GRIDS:
            raise ValueError(f"patch_num={patch_num} is not supported: TokenPacker-HD defines 9, 16 and 25.")
        if tile_size < 1:
            raise ValueError(f"tile_size must be positive, got {tile_size}.")
        self.patch_num = patch_num
        self.tile_size = tile_size
        self.image_mean = list(image_mean or OPENAI_CLIP_MEAN)
        self.image_std = list(image_std or OPENAI_CLIP_STD)
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of this size."""
        return choose_grid(height, width, self.patch_num, self.tile_size)

    def num_views(self, height: int, width: int) -> int:
        return views_of_grid(*self.grid(height, width))

    def _normalize(
        self, pixels: np.ndarray, do_rescale: bool | None = None, rescale_factor: float | None = None
    ) -> torch.Tensor:
        """uint8 (C, H, W) -> float32, as torchvision's ToTensor + Normalize in the original."""
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
        values = torch.from_numpy(pixels).float()
        if self.do_rescale if do_rescale is None else do_rescale:
            # A division, so that 1/255 gives ToTensor's exact values.
            values = values / (1 / (self.rescale_factor if rescale_factor is None else rescale_factor))
        return (values - mean) / std

    def slice_image(self, image, do_rescale: bool | None = None, rescale_factor: float | None = None) -> torch.Tensor:
        """(views, 3, tile_size, tile_size) float32 views of one image."""
        pixels = np.asarray(load_image(image)).transpose(2, 0, 1)  # a uint8 view: no full-size float copy
        height, width = pixels.shape[1:]
        rows, cols = self.grid(height, width)
        size = self.tile_size

        canvas = torch.zeros(3, rows * size, cols * size)  # zero in normalised space: the mean colour
        fitted_h, fitted_w = fit_size(height, width, rows * size, cols * size)
        normalize = functools.partial(self._normalize, do_rescale=do_rescale, rescale_factor=rescale_factor)
        canvas[:, :fitted_h, :fitted_w] = resize_bilinear(pixels, (fitted_h, fitted_w), normalize)
        tiles = canvas.unflatten(1, (rows, size)).unflatten(3, (cols, size)).permute(1, 3, 0, 2, 4)
        views = [tiles.reshape(rows * cols, 3, size, size)]
        if rows * cols > 1:
            # As released: the global view resizes the padded canvas (padding band included) to the image's
            # aspect-fit size, so it is squashed when the canvas and the image aspects differ.
            global_view = torch.zeros(1, 3, size, size)
            global_h, global_w = fit_size(height, width, size, size)
            global_view[0, :, :global_h, :global_w] = resize_bilinear(canvas, (global_h, global_w))
            views.append(global_view)
        return torch.cat(views)

    def regions_on_canvas(self, masks: np.ndarray, height: int, width: int) -> torch.Tensor:
        """(regions, height, width) masks of an image -> (regions, rows * tile_size, cols * tile_size) bool masks on
        its tile canvas, placed exactly as the image (see `masks_on_canvas`)."""
        return masks_on_canvas(masks, *self.grid(height, width), self.tile_size)

    def preprocess(
        self,
        images,
        return_tensors=None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        **kwargs,
    ) -> BatchFeature:
        if kwargs:
            raise TypeError(f"TokenPackerImageProcessor got unexpected arguments: {sorted(kwargs)}.")
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("No images were given.")
        images = [load_image(image) for image in images]
        pixel_values = torch.cat([self.slice_image(image, do_rescale, rescale_factor) for image in images])
        image_sizes = torch.tensor([(image.height, image.width) for image in images])
        if return_tensors != "pt":
            pixel_values, image_sizes = pixel_values.numpy(), image_sizes.numpy()
        return BatchFeature({"pixel_values": pixel_values, "image_sizes": image_sizes}, tensor_type=return_tensors)
