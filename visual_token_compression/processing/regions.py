"""Region masks as users give them (binary masks, boxes, COCO RLE and polygons) -> binary masks at the image size.

COCO RLE and polygons are decoded by `pycocotools` (the `regions` extra), imported only when such a region is given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
from PIL import Image

REGIONS_EXTRA = "pip install 'visual-token-compression[regions]'"


def coco_mask_api():
    """`pycocotools.mask`, or an error that says how to get it."""
    try:
        from pycocotools import mask
    except ImportError as error:
        raise ImportError(
            f"COCO RLE and polygon regions are decoded with pycocotools, which is not installed: {REGIONS_EXTRA} "
            "(or give binary masks or [x1, y1, x2, y2] boxes)."
        ) from error
    return mask


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def box_mask(box, height: int, width: int) -> np.ndarray:
    """[x1, y1, x2, y2] in pixels -> the pixels whose centres lie inside the box (x1 <= x + 0.5 < x2)."""
    x1, y1, x2, y2 = (float(value) for value in box)
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"A region box must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2, got {list(box)}.")
    mask = np.zeros((height, width), dtype=bool)
    rows = slice(max(0, math.ceil(y1 - 0.5)), max(0, math.ceil(y2 - 0.5)))
    cols = slice(max(0, math.ceil(x1 - 0.5)), max(0, math.ceil(x2 - 0.5)))
    mask[rows, cols] = True
    return mask


def coco_segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation`: polygons (a list of [x, y, ...] lists), or RLE (`{"size", "counts"}`, counts compressed
    or not), as the original's `annToMask`."""
    api = coco_mask_api()
    if isinstance(segmentation, Mapping):
        rle = dict(segmentation)
        if isinstance(rle.get("counts"), (list, tuple)):
            rle = api.frPyObjects(rle, *rle["size"])
        elif isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode()
        if list(rle["size"]) != [height, width]:
            raise ValueError(f"An RLE region of size {list(rle['size'])} does not fit the {height}x{width} image.")
    else:
        polygons = [list(map(float, polygon)) for polygon in segmentation]
        if not polygons or any(len(polygon) < 6 or len(polygon) % 2 for polygon in polygons):
            raise ValueError("A polygon region is a list of [x1, y1, x2, y2, x3, y3, ...] lists of 3 points or more.")
        rle = api.merge(api.frPyObjects(polygons, height, width))
    return api.decode(rle).astype(bool)


def region_mask(region, height: int, width: int) -> np.ndarray:
    """One region -> an (height, width) bool mask.

    A region is a binary mask (2-D array, tensor, PIL image or image file of the image's size, nonzero inside), a box
    `[x1, y1, x2, y2]`, COCO polygons `[[x, y, ...], ...]`, a COCO RLE dict, or a dict holding one of them under
    `"mask"`, `"box"`, `"polygons"`, `"rle"` or `"segmentation"` (the training records' format).
    """
    if isinstance(region, Mapping):
        if "counts" in region:
            return coco_segmentation_mask(region, height, width)
        given = [key for key in ("mask", "box", "polygons", "rle", "segmentation") if region.get(key) is not None]
        if len(given) != 1:
            raise ValueError(
                f"A region dict holds exactly one of 'mask', 'box', 'polygons', 'rle', 'segmentation'; got keys "
                f"{sorted(region)}."
            )
        return region_mask(region[given[0]], height, width)
    if isinstance(region, (str, os.PathLike)):
        if not os.path.isfile(region):
            raise FileNotFoundError(f"Region mask file not found: {region}")
        with Image.open(region) as opened:
            region = np.asarray(opened.convert("L"))
    if isinstance(region, Image.Image):
        region = np.asarray(region.convert("L"))
    if hasattr(region, "detach"):  # a torch tensor, without importing torch here
        region = region.detach().cpu().numpy()
    if isinstance(region, np.ndarray):
        if region.ndim != 2:
            raise ValueError(f"A mask region must be 2-D (height, width), got shape {region.shape}.")
        if region.shape != (height, width):
            raise ValueError(f"A mask region of shape {region.shape} does not fit the {height}x{width} image.")
        return region != 0
    if isinstance(region, (list, tuple)) and len(region) == 4 and all(_is_number(value) for value in region):
        return box_mask(region, height, width)
    if isinstance(region, (list, tuple)) and region and all(isinstance(polygon, (list, tuple)) for polygon in region):
        return coco_segmentation_mask(region, height, width)
    raise TypeError(
        f"Cannot read a region from {type(region).__name__}: give a binary mask (array, tensor, PIL image), a box "
        "[x1, y1, x2, y2], COCO polygons or a COCO RLE dict."
    )


def image_regions(regions, height: int, width: int) -> np.ndarray:
    """One image's regions (a list of regions, an (n, height, width) array or tensor, or None) -> (n, h, w) bool."""
    if regions is None:
        return np.zeros((0, height, width), dtype=bool)
    if hasattr(regions, "detach"):
        regions = regions.detach().cpu().numpy()
    if isinstance(regions, np.ndarray) and regions.ndim == 3:
        regions = list(regions)
    if isinstance(regions, np.ndarray) or not isinstance(regions, (list, tuple)):
        raise TypeError(
            "Each image's region_masks entry is a list of its regions (or an (n, height, width) array), got "
            f"{type(regions).__name__}."
        )
    if regions and all(_is_number(value) for value in regions):
        raise TypeError(f"{list(regions)} looks like one box: put an image's regions in a list, [[x1, y1, x2, y2]].")
    masks = [region_mask(region, height, width) for region in regions]
    return np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
