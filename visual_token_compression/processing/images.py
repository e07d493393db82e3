"""Turning whatever a user passes as an image into an 8-bit RGB PIL image, or a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer/float modes (PNG 'I;16', 'I', 'F') scaled to 8 bits instead of clipped."""
    array = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        array = array / 257.0
    else:
        low, high = float(array.min()), float(array.max())
        array = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, RGBA (composited on white), CMYK and 16-bit images as 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def load_image(image) -> Image.Image:
    """A PIL image, a path, or an HWC uint8 array -> RGB PIL image; unreadable input raises naming the file."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                return to_rgb(opened)
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"Cannot read {path} as an image: {error}") from error
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"Image arrays must be HxW or HxWxC uint8, got shape {image.shape} and dtype {image.dtype}."
            )
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image, a path or a uint8 array, got {type(image).__name__}.")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"Image has an empty size {image.size}.")
    return to_rgb(image)
