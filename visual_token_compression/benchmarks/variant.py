"""One benchmark row, as the registry's `ModelType.bench_sweep` yields them (kept free of the runner's imports)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    """One row: a method, its setting, and the image it is fed. `cached_image`: VoCo's per-query cost, the image
    compressed beforehand into a cache that the timed prefill reuses."""

    label: str
    method: str
    model_type: str | None = None
    config_kwargs: dict = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    cached_image: bool = False
