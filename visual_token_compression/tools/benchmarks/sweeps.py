"""`vtc bench`'s table: the rows each registered model type is measured in, and its compressor's FLOPs formula.

`tests/test_registry.py` checks that both tables cover every entry of the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import flops


@dataclass(frozen=True)
class Variant:
    """One row: a method, its setting, and the image it is fed. `cached_image`: the per-query cost, the image prefix
    run beforehand into a cache that the timed prefill reuses (VoCo-LLaMA's compressed cache). `frames`: a clip of
    that many frames instead of an image (0), compared with the baseline fed every frame as an image."""

    label: str
    method: str
    model_type: str | None = None
    config_kwargs: dict = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    cached_image: bool = False
    regions: int = 0  # region masks in the prompt, one `<mask>` each (TokenPacker-HD with Osprey's region extractor)
    frames: int = 0


def _tokenpacker_sweep(preset: str, grid: int, tile: int) -> Iterator[Variant | str]:
    """The three released scales, then TokenPacker-HD (9 tiles) on wider images: (rows, columns) of tower tiles; then
    the first of those images with region masks (Osprey's region extractor), against the same image without."""
    for scale in (2, 3, 4):
        if grid % scale:
            yield f"tokenpacker s={scale}: does not divide the {grid}x{grid} grid"
        else:
            yield Variant(f"tokenpacker s={scale}", "tokenpacker", "tokenpacker", {"scale_factor": scale})
    hd_tiles = {"tiny": ((1, 2), (2, 2)), "small": ((1, 2),), "llava-7b": ((1, 2), (2, 2), (3, 3))}
    for rows, columns in hd_tiles.get(preset, ()):
        height, width = rows * tile, columns * tile
        kwargs = {"scale_factor": 2, "patch_num": 9}
        yield Variant(f"tokenpacker-hd {height}x{width}", "tokenpacker_hd", "tokenpacker", kwargs, (height, width))
    for rows, columns in hd_tiles.get(preset, ())[:1]:
        height, width = rows * tile, columns * tile
        regions = {"llava-7b": 16}.get(preset, 4)
        kwargs = {"scale_factor": 2, "patch_num": 9, "use_region_extractor": True}
        label = f"tokenpacker-hd {height}x{width} + {regions} regions"
        yield Variant(label, "tokenpacker_hd", "tokenpacker", kwargs, (height, width), regions=regions)


def _quecc_sweep(preset: str, grid: int, tile: int) -> Iterator[Variant | str]:
    """The paper's token counts, each a square grid pooled with kernel = stride."""
    for tokens in (1, 4, 16, 36, 64, 144):
        side = round(tokens**0.5)
        if side * side != tokens or grid % side:
            yield f"quecc {tokens}: {tokens} tokens is no square grid dividing {grid}x{grid}"
        else:
            stride = grid // side
            yield Variant(f"quecc {tokens}", "quecc", "quecc", {"kernel_size": stride, "stride": stride})


# Clip lengths per preset. `small` stops at 8: its all-frames baseline at 32 frames is an 18K-token prefill, minutes on
# a CPU per measurement.
VIDEO_FRAMES = {"tiny": (8, 32), "small": (8,), "llava-7b": (8, 32)}


def _voco_llama_sweep(preset: str, grid: int, tile: int) -> Iterator[Variant]:
    """1 and 2 VoCo tokens, each also with the image compressed beforehand (the per-query cost), then clips."""
    for count in (1, 2):
        kwargs = {"num_voco_tokens": count}
        yield Variant(f"voco_llama k={count}", "voco_llama", "voco_llama", kwargs)
        yield Variant(f"voco_llama k={count} cached image", "voco_llama", "voco_llama", kwargs, cached_image=True)
    for frames in VIDEO_FRAMES.get(preset, (8,)):
        for count in (1, 2):
            label = f"voco_llama k={count} video T={frames}"
            yield Variant(label, "voco_llama", "voco_llama", {"num_voco_tokens": count}, frames=frames)


def _setok_sweep(preset: str, grid: int, tile: int) -> Iterator[Variant]:
    """`max_image_tokens`: the LLM always processes that many positions, whatever the clustering keeps."""
    for count in {"tiny": (16,), "small": (144,), "llava-7b": (64, 144)}.get(preset, (grid * grid // 4,)):
        yield Variant(f"setok max={count}", "setok", "setok", {"max_image_tokens": count, "vision_feature_layer": -2})


def _visionzip_sweep(preset: str, grid: int, tile: int) -> Iterator[Variant | str]:
    """The paper's 64, 128 and 192 tokens (dominant + contextual)."""
    for dominant, contextual in ((54, 10), (108, 20), (162, 30)):
        tokens = dominant + contextual
        if tokens > grid * grid + 1:
            yield f"visionzip {tokens}: more than the {grid * grid + 1} tokens of a {grid}x{grid} view"
        else:
            kwargs = {"dominant_tokens": dominant, "contextual_tokens": contextual}
            yield Variant(f"visionzip {tokens}", "visionzip", "visionzip", kwargs)


# (preset name, patch grid side, tower image size) -> the rows to measure, or notes on settings the grid cannot take.
BENCH_SWEEPS: dict[str, Callable[[str, int, int], Iterator[Variant | str]]] = {
    "setok": _setok_sweep,
    "quecc": _quecc_sweep,
    "voco_llama": _voco_llama_sweep,
    "tokenpacker": _tokenpacker_sweep,
    "visionzip": _visionzip_sweep,
}

# FLOPs of the compressor in one prefill, `(config, processor inputs)`; None: counted on the real modules at run
# time (a data-driven compressor, as SeTok's clustering).
COMPRESSOR_FLOPS: dict[str, Callable[..., int] | None] = {
    "setok": None,
    "quecc": flops.quecc_flops,
    "voco_llama": flops.voco_llama_flops,
    "tokenpacker": flops.tokenpacker_flops,
    "visionzip": flops.visionzip_flops,
}

# FLOPs of the language model in one prefill, `(config, processor inputs)`, where it is not one causal pass over the
# whole prompt: VoCo-LLaMA's inference prefill runs unit by unit over the compressed cache.
LLM_FLOPS: dict[str, Callable[..., int] | None] = {
    "setok": None,
    "quecc": None,
    "voco_llama": flops.voco_llama_llm_flops,
    "tokenpacker": None,
    "visionzip": None,
}
