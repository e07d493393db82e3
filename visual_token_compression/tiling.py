"""TokenPacker-HD's tile grids: which rows x cols of tower-sized tiles an image of a given size is cut into.

Its own module because both sides need it: the image processor cuts the tiles, and the model groups the views of
each image from `image_sizes`; neither may import the other.
"""

from __future__ import annotations

import torch

# The original's candidate grids (rows, cols) in its order: the first best score wins, so order decides ties.
_GRIDS_9 = [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2), (1, 4), (4, 1), (1, 5), (5, 1), (1, 6), (6, 1), (2, 3),
            (3, 2), (1, 7), (7, 1), (4, 2), (2, 4), (1, 8), (8, 1), (3, 3), (1, 9), (9, 1)]  # fmt: skip
_GRIDS_16 = _GRIDS_9 + [(2, 5), (5, 2), (2, 6), (6, 2), (3, 4), (4, 3), (2, 7), (7, 2), (3, 5), (5, 3), (2, 8),
                        (8, 2), (4, 4)]  # fmt: skip
# (4, 6) and (6, 4) are listed twice in the original; kept, since only the list order matters.
_GRIDS_25 = _GRIDS_16 + [(3, 6), (6, 3), (2, 9), (9, 2), (4, 5), (5, 4), (2, 10), (10, 2), (3, 7), (7, 3), (11, 2),
                         (2, 11), (4, 6), (6, 4), (12, 2), (2, 12), (3, 8), (8, 3), (4, 6), (6, 4), (5, 5)]  # fmt: skip
TILE_GRIDS = {9: _GRIDS_9, 16: _GRIDS_16, 25: _GRIDS_25}


def choose_grid(height: int, width: int, patch_num: int, tile_size: int) -> tuple[int, int]:
    """The original's `Image_Patch.calculate`: canvas fill + 0.1 * IoU with a 1.4x box, in float32, first max wins."""
    grids = torch.tensor(TILE_GRIDS[patch_num])
    canvas = grids * tile_size  # int64, like the original's boxes
    image = torch.tensor([height, width])
    ratio = (canvas / image).amin(dim=-1)  # int64 / int64 -> float32, as in the original
    areas = canvas.prod(dim=-1)
    fill = torch.round(height * ratio) * torch.round(width * ratio) / areas
    target = image * 1.4
    overlap = torch.minimum(canvas, target).prod(dim=-1)
    iou = overlap / (areas + target.prod() - overlap + 1e-5)
    rows, cols = TILE_GRIDS[patch_num][int(torch.argmax(fill + iou * 0.1))]
    return rows, cols


def views_of_grid(rows: int, cols: int) -> int:
    """Views of an image cut into rows x cols tiles: the tiles, plus a global view when there are several."""
    return rows * cols + (rows * cols > 1)
