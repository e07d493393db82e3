"""Build the baseline and every method on one shared vision tower and LLM, then measure them interleaved.

All models hold the *same* tower, LLM and LM-head modules (the baseline's, randomly initialised), so rows differ
only by their compressor and their token layout. Timings are taken round-robin over the rows, each round in a
rotated order, so that drift of a shared machine hits every row alike.
"""

from __future__ import annotations

import copy
import gc
import statistics
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import LlavaConfig, LlavaForConditionalGeneration

from ...compat import CACHE_NAME, output_cache
from ...processing.base import build_image_processor
from ...registry import MODEL_TYPES
from ..tiny import byte_tokenizer
from . import flops
from .allocator import keep_freed_memory
from .measure import TokenClock, cache_bytes, counted_flops, peak_memory_bytes, timed_call
from .parts import Parts, record_parts
from .presets import Preset
from .sweeps import BENCH_SWEEPS, COMPRESSOR_FLOPS, LLM_FLOPS, Variant

BASELINE = "llava"
# The bare causal LM a cached VoCo row is compared with (`vs_bare_llm`): what `AutoModelForCausalLM` runs over the same
# tokens and cache, embedding lookup, decoder and LM head (at 49K words the head alone is 6 % of a 65-token pass).
BARE_LLM_PARTS = ("embedding", "llm", "head")


def variants(preset: Preset) -> tuple[list[Variant], list[str]]:
    """The baseline, then every registered method's rows (`sweeps.BENCH_SWEEPS`), and a note for each setting the
    vision grid cannot take. Clips of T frames get their own baseline first: LLaVA fed every frame as an image."""
    vision = preset.vision_config()
    grid = vision.image_size // vision.patch_size
    rows, skipped = [Variant(f"llava ({grid * grid})", BASELINE)], []
    for name in MODEL_TYPES:
        for item in BENCH_SWEEPS[name](preset.name, grid, vision.image_size):
            (skipped if isinstance(item, str) else rows).append(item)
    clips = sorted({row.frames for row in rows if row.frames})
    baselines = [
        Variant(f"llava video T={frames} ({frames * grid * grid})", BASELINE, frames=frames) for frames in clips
    ]
    return [
        rows[0],
        *[row for row in rows[1:] if not row.frames],
        *baselines,
        *[row for row in rows if row.frames],
    ], skipped


@dataclass
class Prepared:
    """A built row: its model, prefill inputs, and what the FLOPs count needs."""

    variant: Variant
    model: torch.nn.Module
    inputs: dict
    generate_inputs: dict
    config: object
    views: int
    cache: object = None
    parts: Parts | None = None
    prefill_seconds: list[float] = field(default_factory=list)
    part_seconds: list[dict[str, float]] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    kv_bytes: int = 0
    kept_image_tokens: int | None = None
    counted_compressor_flops: int | None = None
    peak_memory: int | None = None


class Benchmark:
    """Builds every row of a preset on one device and dtype, and measures them."""

    def __init__(self, preset: Preset, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
        self.preset = preset
        # Process-wide, before any row allocates: no row's timing may depend on the passes run before it.
        self.allocator = keep_freed_memory()
        self.device = torch.device(device)
        self.dtype = dtype
        self.seed = seed
        special = [
            token
            for entry in MODEL_TYPES.values()
            for token in [
                *entry.special_tokens.values(),
                *(token for token, _ in entry.optional_special_tokens.values()),
            ]
        ]
        self.tokenizer = byte_tokenizer(tuple(dict.fromkeys(["<image>", *special])))
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<image>")
        self.video_token_id = self.tokenizer.convert_tokens_to_ids("<video>")
        self.vision_config = preset.vision_config()
        self.text_config = preset.text_config()
        if self.text_config.vocab_size < len(self.tokenizer):
            raise ValueError(
                f"The preset's vocabulary ({self.text_config.vocab_size}) is smaller than the benchmark tokenizer's "
                f"({len(self.tokenizer)})."
            )
        self.grid = self.vision_config.image_size // self.vision_config.patch_size
        # A question of `text_tokens` byte tokens (the byte tokenizer has no merges: one character, one token).
        self.question = ("what is shown in this picture? " * preset.text_tokens)[: preset.text_tokens]
        self.rng = np.random.default_rng(seed)
        self.baseline = self._build_baseline()

    def _image(self, size: tuple[int, int] | None) -> Image.Image:
        height, width = size or (self.vision_config.image_size,) * 2
        return Image.fromarray(self.rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    def _visual_inputs(self, variant: Variant) -> tuple[str, dict]:
        """The row's prompt text and processor arguments: an image, or a clip of `frames` frames."""
        if variant.frames:
            return "<video>\n" + self.question, {"videos": [[self._image(None) for _ in range(variant.frames)]]}
        image = self._image(variant.image_size)
        if variant.regions:  # TokenPacker-HD's region masks, each asked about by a `<mask>` after the question
            masks = "".join(f" region{index + 1}<mask>" for index in range(variant.regions))
            boxes = region_boxes(variant.regions, image.height, image.width)
            return "<image>\n" + self.question + masks, {"images": image, "region_masks": [boxes]}
        return "<image>\n" + self.question, {"images": image}

    def _build_baseline(self) -> LlavaForConditionalGeneration:
        config = LlavaConfig(
            vision_config=self.vision_config,
            text_config=self.text_config,
            image_token_id=self.image_token_id,
            image_seq_length=self.grid**2,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        torch.manual_seed(self.seed)
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=self.dtype)
        return self._ready(model.to(self.device))

    def _ready(self, model):
        model.eval()
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        model.generation_config.eos_token_id = self.tokenizer.eos_token_id
        model.generation_config.bos_token_id = self.tokenizer.bos_token_id
        return model

    def _build_method(self, variant: Variant):
        """The method's model around the baseline's tower, LLM and head; only its compressor is new."""
        entry = MODEL_TYPES[variant.model_type]
        kwargs = {**self.preset.method_kwargs.get(variant.model_type, {}), **variant.config_kwargs}
        for field_name, token in entry.special_tokens_for(kwargs).items():
            kwargs.setdefault(field_name, self.tokenizer.convert_tokens_to_ids(token))
        config = entry.config_class(
            vision_config=self.vision_config,
            text_config=self.text_config,
            image_token_id=self.image_token_id,
            **kwargs,
        )
        with torch.device("meta"):
            model = entry.for_generation_class._from_config(config, attn_implementation="sdpa")
        model.model.vision_tower = self.baseline.model.vision_tower
        model.model.language_model = self.baseline.model.language_model
        model.lm_head = self.baseline.lm_head
        torch.manual_seed(self.seed)
        model.model.compressor = entry.model_class.compressor_class(model.config).to(self.device, self.dtype)
        left = [name for name, tensor in _named_tensors(model) if tensor.is_meta]
        if left:
            raise RuntimeError(f"{variant.label}: parameters outside the compressor were not shared: {left[:5]}")
        processor = entry.processor_class.from_config(model.config, self.tokenizer)
        return self._ready(model), processor

    def _to_device(self, encoding) -> dict:
        def moved(value):
            if isinstance(value, list):  # region masks: one tensor per image
                return [moved(item) for item in value]
            return value.to(self.device, self.dtype if value.is_floating_point() else None)

        return {key: moved(value) for key, value in encoding.items()}

    def prepare(self, variant: Variant) -> Prepared:
        text, visual = self._visual_inputs(variant)
        if variant.method == BASELINE:
            images = visual.get("videos", [[visual.get("images")]])[0]
            pixels = build_image_processor(self.vision_config)(images, return_tensors="pt")["pixel_values"]
            placeholders = "<image>" * self.grid**2 * len(images)
            ids = self.tokenizer(
                text.replace("<video>", "<image>").replace("<image>", placeholders), return_tensors="pt"
            )
            inputs = self._to_device({**ids, "pixel_values": pixels})
            return Prepared(variant, self.baseline, inputs, dict(inputs), self.baseline.config, views=len(images))

        model, processor = self._build_method(variant)
        inputs = self._to_device(processor(text=text, return_tensors="pt", **visual))
        prepared = Prepared(variant, model, inputs, dict(inputs), model.config, flops.views_of(inputs))
        if variant.cached_image:
            prefix = self._to_device(processor(text="<image>", return_tensors="pt", **visual))
            length = prefix["input_ids"].shape[1]
            if not torch.equal(inputs["input_ids"][:, :length], prefix["input_ids"]):
                raise RuntimeError("The image prefix does not start the full prompt; cannot reuse its cache.")
            with torch.no_grad():
                prepared.cache = output_cache(model(**prefix, use_cache=True))
            prepared.inputs = {
                "input_ids": inputs["input_ids"][:, length:],
                "attention_mask": inputs["attention_mask"],
            }
            prepared.generate_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        return prepared

    # -- one measurement each --------------------------------------------------------------------------------------

    def _prefill_fn(self, row: Prepared):
        def run():
            with torch.inference_mode():
                past = copy.deepcopy(row.cache) if row.cache is not None else None
                extra = {CACHE_NAME: past} if past is not None else {}
                return row.model(**row.inputs, **extra, use_cache=True, logits_to_keep=1)

        return run

    def time_prefill(self, row: Prepared):
        """One prefill, then its parts called directly (`parts.Parts`), in the same round: their ratio is our
        overhead. A cached row times the forward on a copy of the cache made beforehand, as a query would. The
        garbage of earlier rounds is collected first, so that no timed call pays for it."""
        gc.collect()
        if row.cache is not None:
            past = copy.deepcopy(row.cache)
            with torch.inference_mode():
                _, seconds = timed_call(
                    lambda: row.model(**row.inputs, **{CACHE_NAME: past}, use_cache=True, logits_to_keep=1),
                    self.device,
                )
        else:
            _, seconds = timed_call(self._prefill_fn(row), self.device)
        row.prefill_seconds.append(seconds)
        if row.parts is not None:
            row.part_seconds.append(row.parts.seconds(self.device))

    def time_decode(self, row: Prepared):
        clock = TokenClock(self.device)
        extra = {CACHE_NAME: copy.deepcopy(row.cache)} if row.cache is not None else {}
        with torch.inference_mode():
            row.model.generate(
                **row.generate_inputs,
                **extra,
                max_new_tokens=self.preset.new_tokens,
                min_new_tokens=self.preset.new_tokens,
                do_sample=False,
                streamer=clock,
            )
        row.decode_tps.append(clock.decode_tokens_per_second())

    def inspect(self, row: Prepared, parts: bool = True):
        """Untimed facts of a row: KV bytes after its prefill, the tokens a dynamic compressor kept, its parts
        recorded for timing (with `parts`) and, for a compressor without a FLOPs formula, its counted FLOPs."""
        output = self._prefill_fn(row)()
        row.kv_bytes = cache_bytes(output_cache(output))
        compressed = getattr(getattr(output, "image_outputs", None), "compressor_output", None)
        if getattr(compressed, "token_mask", None) is not None:
            row.kept_image_tokens = int(compressed.token_mask.sum())
        if parts:
            row.parts = record_parts(row.model, self._prefill_fn(row), baseline=row.variant.method == BASELINE)
        if row.variant.method != BASELINE and COMPRESSOR_FLOPS[row.variant.model_type] is None:
            counts = counted_flops(lambda: row.model(**row.inputs, use_cache=True, logits_to_keep=1))
            row.counted_compressor_flops = sum(
                count for name, count in counts.items() if name.endswith("model.compressor")
            )

    # -- the run -----------------------------------------------------------------------------------------------------

    def run(self, measure_memory: bool = True, progress: bool = True, only: set[str] | None = None) -> list[dict]:
        """Measure every row of the preset, or those labelled in `only` (the baseline always comes first)."""
        rows_to_build, self.skipped = variants(self.preset)
        if only is not None:
            clips = {row.frames for row in rows_to_build if row.label in only}
            rows_to_build = [
                row
                for row in rows_to_build
                if row.label in only or (row.method == BASELINE and (not row.frames or row.frames in clips))
            ]
        return self.measure(rows_to_build, measure_memory, progress)

    def measure(
        self, rows_to_build: list[Variant], measure_memory: bool = True, progress: bool = True, parts: bool = True
    ) -> list[dict]:
        """Build and measure these rows (each compared with the baseline row of the same `frames` among them).
        Without `parts`, neither the parts nor the overhead are timed (half the prefill passes: the demo's use)."""
        rows = [self.prepare(variant) for variant in tqdm(rows_to_build, desc="build", disable=not progress)]
        steps = len(rows) * (1 + self.preset.repeats + self.preset.decode_repeats + measure_memory)
        with tqdm(total=steps, desc=f"bench {self.preset.name}", disable=not progress) as bar:
            for row in rows:  # the untimed facts, which also warm every row up
                self.inspect(row, parts)
                bar.update()
            for round_index in range(self.preset.repeats):
                for row in _rotated(rows, round_index):
                    self.time_prefill(row)
                    bar.update()
            # More rounds, up to `max_overhead_repeats`, for rows whose overhead more rounds could still place on the
            # other side of the 3 % budget.
            for round_index in range(self.preset.repeats, self.preset.max_overhead_repeats if parts else 0):
                unsettled = [row for row in rows if not overhead_settled(row)]
                if not unsettled:
                    break
                for row in _rotated(unsettled, round_index):
                    self.time_prefill(row)
            for round_index in range(self.preset.decode_repeats):
                for row in _rotated(rows, round_index):
                    self.time_decode(row)
                    bar.update()
            if measure_memory:
                for row in rows:
                    row.peak_memory = peak_memory_bytes(self._prefill_fn(row), self.device)
                    bar.update()
        return self.rows(rows)

    def flops(self, row: Prepared) -> flops.PrefillFlops:
        """Analytic FLOPs of the row's timed prefill (a compressor without a formula: counted)."""
        config, views = row.config, row.views
        seq_len = row.inputs["input_ids"].shape[1]
        if row.cache is not None:
            past = row.kv_bytes // flops.kv_cache_bytes(self.text_config, 1, self.dtype.itemsize) - seq_len
            return flops.PrefillFlops(0, 0, flops.llm_flops(self.text_config, seq_len, past_tokens=past))
        vision = flops.clip_vision_flops(self.vision_config, views)
        llm = flops.llm_flops(self.text_config, seq_len)
        if row.variant.method != BASELINE and (llm_formula := LLM_FLOPS[row.variant.model_type]) is not None:
            llm = llm_formula(config, row.inputs)
        if row.variant.method == BASELINE:
            compressor = flops.llava_projector_flops(config, views)
        elif (formula := COMPRESSOR_FLOPS[row.variant.model_type]) is not None:
            compressor = formula(config, row.inputs)
        else:
            compressor = row.counted_compressor_flops
        return flops.PrefillFlops(vision, compressor, llm)

    def rows(self, prepared: list[Prepared]) -> list[dict]:
        """One dict per row; speed-ups against the baseline fed the same (an image, or the clip's frames)."""
        baselines = {row.variant.frames: row for row in prepared if row.variant.method == BASELINE}
        out = []
        for row in prepared:
            base = baselines[row.variant.frames]
            base_flops = self.flops(base)
            base_prefill = statistics.median(base.prefill_seconds)
            cost = self.flops(row)
            prefill = statistics.median(row.prefill_seconds)
            ids = row.inputs["input_ids"]
            placeholders = (ids == self.image_token_id) | (ids == self.video_token_id)
            visual = int(placeholders.sum()) if row.cache is None else 0
            speedup = base_prefill / prefill
            ideal = base_flops.total / cost.total
            out.append(
                {
                    "preset": self.preset.name,
                    "method": row.variant.method,
                    "label": row.variant.label,
                    "setting": row.variant.config_kwargs,
                    "image_size": list(row.variant.image_size or (self.vision_config.image_size,) * 2),
                    "cached_image": row.variant.cached_image,
                    "frames": row.variant.frames,
                    "views": row.views if row.cache is None else 0,
                    "visual_tokens": visual,
                    "kept_image_tokens": row.kept_image_tokens,
                    "prefill_tokens": ids.shape[1],
                    "prefill_ms": 1e3 * prefill,
                    "prefill_ms_min": 1e3 * min(row.prefill_seconds),
                    "prefill_ms_max": 1e3 * max(row.prefill_seconds),
                    **self.part_fields(row, prefill),
                    "prefill_speedup": speedup,
                    "ideal_speedup": ideal,
                    "ideal_speedup_llm": base_flops.llm / cost.llm,
                    "efficiency": speedup / ideal,
                    "flops_vision": cost.vision,
                    "flops_compressor": cost.compressor,
                    "flops_llm": cost.llm,
                    "compressor_flops_share": cost.compressor / cost.total,
                    "decode_tokens_per_s": statistics.median(row.decode_tps) if row.decode_tps else None,
                    "kv_cache_bytes": row.kv_bytes,
                    "kv_cache_tokens": row.kv_bytes // flops.kv_cache_bytes(self.text_config, 1, self.dtype.itemsize),
                    "peak_memory_bytes": row.peak_memory,
                    "repeats": len(row.prefill_seconds),
                }
            )
        return out

    @staticmethod
    def part_fields(row: Prepared, prefill: float) -> dict:
        """The row's fields from its timed parts (None where the parts were not timed)."""
        if not row.part_seconds:
            names = ("vision_ms", "compressor_ms", "compressor_share", "overhead", "overhead_spread", "vs_bare_llm")
            return dict.fromkeys(names)
        return {
            "vision_ms": 1e3 * part_median(row, "vision"),
            "compressor_ms": 1e3 * part_median(row, "compressor"),
            "compressor_share": part_median(row, "compressor") / prefill,
            "overhead": overhead(row)[0],
            "overhead_spread": overhead(row)[1],
            "vs_bare_llm": statistics.median(
                sum(parts.get(part, 0.0) for part in BARE_LLM_PARTS) / seconds
                for parts, seconds in zip(row.part_seconds, row.prefill_seconds, strict=True)
            )
            if row.cache is not None
            else None,
        }


def region_boxes(count: int, height: int, width: int) -> list[list[float]]:
    """`count` boxes [x1, y1, x2, y2], each a quarter of the image's sides, spread along its diagonal."""
    steps = [index / max(1, count - 1) for index in range(count)]
    return [
        [0.75 * width * t, 0.75 * height * t, 0.75 * width * t + width / 4, 0.75 * height * t + height / 4]
        for t in steps
    ]


def _named_tensors(model):
    yield from model.named_parameters()
    yield from model.named_buffers()


# Our overhead's budget (prefill over the sum of its parts), and the precision at which a row's overhead is known
# whatever its value: a 95 % interval of +-1.5 %, so that a 3 % overhead is told from noise.
OVERHEAD_BUDGET = 1.03
OVERHEAD_PRECISION = 0.015


def overhead_settled(row: Prepared) -> bool:
    """Whether more rounds would tell more about the row's overhead: not once its 95 % interval is within +-1.5 %, or
    lies wholly below or above the budget (a long prefill clearly within it needs no more minutes)."""
    _, mean, half_width = _overhead_interval(row)
    low, high = mean * (1 - half_width), mean * (1 + half_width)
    return half_width <= OVERHEAD_PRECISION or high < OVERHEAD_BUDGET or low > OVERHEAD_BUDGET


def overhead(row: Prepared) -> tuple[float, float]:
    """The row's prefill time over the sum of its parts (median over rounds) and the half-width of the 95 % interval
    of that ratio's mean, relative to it (inf with fewer than 3 rounds)."""
    median, _, half_width = _overhead_interval(row)
    return median, half_width


def _overhead_interval(row: Prepared) -> tuple[float, float, float]:
    """(median, mean, relative half-width of the mean's 95 % interval) of the rounds' prefill / parts ratios.
    Student's t, not the normal 1.96: with the 3 to 5 rounds most rows get, the normal quantile would give an
    interval 1.4 to 2.2 times too narrow."""
    from scipy.stats import t as student_t

    ratios = [
        seconds / sum(parts.values()) for seconds, parts in zip(row.prefill_seconds, row.part_seconds, strict=True)
    ]
    mean, rounds = statistics.fmean(ratios), len(ratios)
    if rounds < 3:
        return statistics.median(ratios), mean, float("inf")
    half_width = student_t.ppf(0.975, rounds - 1) * statistics.stdev(ratios) / rounds**0.5 / mean
    return statistics.median(ratios), mean, half_width


def part_median(row: Prepared, part: str) -> float:
    """Median seconds of one part over the rounds (0 for a part the row does not run)."""
    return statistics.median(parts.get(part, 0.0) for parts in row.part_seconds)


def _rotated(items: list, shift: int) -> list:
    shift %= len(items)
    return items[shift:] + items[:shift]
