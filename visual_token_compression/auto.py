"""Registration of every model type with the transformers Auto classes, in one place.

`MODEL_TYPES` is the registry: one entry per method, with its config, model, generation model and processor, and
every other fact a tool needs about the method (`vtc convert`, `vtc bench`). Tools loop over it and never name a
method, so a new method is its config, modeling and processor files plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .benchmarks import flops
from .benchmarks.variant import Variant
from .compat import register_v5_names
from .configuration import CompressedVLMConfig, TokenPackerConfig
from .configuration.quecc import QueCCConfig
from .configuration.setok import SeTokConfig
from .configuration.visionzip import VisionZipConfig
from .configuration.voco_llama import VoCoLlamaConfig
from .conversion.common import OriginalConverter
from .conversion.quecc import QueCCConverter
from .conversion.setok import SeTokConverter
from .conversion.tokenpacker import TokenPackerConverter
from .conversion.voco_llama import VoCoLlamaConverter
from .modeling import CompressedVLMForConditionalGeneration, CompressedVLMModel
from .modeling.quecc import QueCCForConditionalGeneration, QueCCModel
from .modeling.setok import SeTokForConditionalGeneration, SeTokModel
from .modeling.tokenpacker import TokenPackerForConditionalGeneration, TokenPackerModel
from .modeling.visionzip import VisionZipForConditionalGeneration, VisionZipModel
from .modeling.voco_llama import VoCoLlamaForConditionalGeneration, VoCoLlamaModel
from .processing import CompressedVLMProcessor, TokenPackerProcessor
from .processing.quecc import QueCCProcessor
from .processing.setok import SeTokProcessor
from .processing.tokenpacker_hd import TokenPackerImageProcessor
from .processing.visionzip import VisionZipProcessor
from .processing.voco_llama import VoCoLlamaProcessor
from .remote_code import write_remote_code
from .save_hooks import register_after_save


@dataclass(frozen=True)
class ModelType:
    config_class: type[CompressedVLMConfig]
    model_class: type[CompressedVLMModel]
    for_generation_class: type[CompressedVLMForConditionalGeneration]
    processor_class: type[CompressedVLMProcessor]
    # Config overrides that make the method fit `tiny.py`'s 32-wide towers and LLMs (tests, demo).
    tiny_config_kwargs: dict = field(default_factory=dict)
    # Special tokens besides `<image>` the method adds to an LLM's tokenizer: config field -> token.
    special_tokens: dict = field(default_factory=dict)
    # This package's image processor the method may use (TokenPacker-HD's tiler), registered and bundled with it.
    image_processor_class: type | None = None
    # `vtc convert <name>`: how the original release's checkpoints convert; None when there is nothing to convert.
    converter: OriginalConverter | None = None
    # `vtc convert llava-hf`: llava-hf projector module -> compressor module that takes its weights ({}: dropped).
    llava_projector: dict = field(default_factory=dict)
    # `vtc bench`: (preset name, patch grid side, tower image size) -> rows, or notes on settings the grid cannot
    # take. None: one row with the config's defaults.
    bench_sweep: Callable[[str, int, int], Iterator[Variant | str]] | None = None
    # FLOPs of the compressor on `views` views, `(config, views, query_tokens)`; None: counted on the real modules
    # (a data-driven compressor, as SeTok's clustering).
    compressor_flops: Callable[..., int] | None = None


def _tokenpacker_sweep(preset: str, grid: int, tile: int) -> Iterator[Variant | str]:
    """The three released scales, then TokenPacker-HD (9 tiles) on wider images: (rows, columns) of tower tiles."""
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


def _quecc_sweep(preset: str, grid: int, tile: int) -> Iterator[Variant | str]:
    """The paper's token counts, each a square grid pooled with kernel = stride."""
    for tokens in (1, 4, 16, 36, 64, 144):
        side = round(tokens**0.5)
        if side * side != tokens or grid % side:
            yield f"quecc {tokens}: {tokens} tokens is no square grid dividing {grid}x{grid}"
        else:
            stride = grid // side
            yield Variant(f"quecc {tokens}", "quecc", "quecc", {"kernel_size": stride, "stride": stride})


def _voco_llama_sweep(preset: str, grid: int, tile: int) -> Iterator[Variant]:
    """1 and 2 VoCo tokens, each also with the image compressed beforehand (the per-query cost)."""
    for count in (1, 2):
        kwargs = {"num_voco_tokens": count}
        yield Variant(f"voco_llama k={count}", "voco_llama", "voco_llama", kwargs)
        yield Variant(f"voco_llama k={count} cached image", "voco_llama", "voco_llama", kwargs, cached_image=True)


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


MODEL_TYPES: dict[str, ModelType] = {
    "setok": ModelType(
        SeTokConfig,
        SeTokModel,
        SeTokForConditionalGeneration,
        SeTokProcessor,
        # On the 32-wide towers the original's threshold 0.55 leaves one cluster per image. These give 2 to 14 on the
        # contract tests' noise images (CLIP and SigLIP), so unfilled slots get padded, with every score at least
        # 8e-4 from the threshold: rounding noise cannot change a count.
        tiny_config_kwargs={"k": 6, "fallback_num_tokens": 6, "threshold": 0.45},
        converter=SeTokConverter(),
        bench_sweep=_setok_sweep,
    ),
    "quecc": ModelType(
        QueCCConfig,
        QueCCModel,
        QueCCForConditionalGeneration,
        QueCCProcessor,
        converter=QueCCConverter(),
        bench_sweep=_quecc_sweep,
        compressor_flops=flops.quecc_flops,
    ),
    "voco_llama": ModelType(
        VoCoLlamaConfig,
        VoCoLlamaModel,
        VoCoLlamaForConditionalGeneration,
        VoCoLlamaProcessor,
        special_tokens={"voco_token_id": "<voco>"},
        converter=VoCoLlamaConverter(),
        bench_sweep=_voco_llama_sweep,
        compressor_flops=flops.voco_llama_flops,
    ),
    "tokenpacker": ModelType(
        TokenPackerConfig,
        TokenPackerModel,
        TokenPackerForConditionalGeneration,
        TokenPackerProcessor,
        tiny_config_kwargs={"compressor_head_dim": 8},
        image_processor_class=TokenPackerImageProcessor,
        converter=TokenPackerConverter(),
        bench_sweep=_tokenpacker_sweep,
        compressor_flops=flops.tokenpacker_flops,
    ),
    "visionzip": ModelType(
        VisionZipConfig,
        VisionZipModel,
        VisionZipForConditionalGeneration,
        VisionZipProcessor,
        # CLS + 11 dominant patches + 4 contextual tokens of the 8 x 8 tiny grid (the fixtures' g8 setting).
        tiny_config_kwargs={"dominant_tokens": 12, "contextual_tokens": 4},
        # Its compressor is LLaVA-1.5's projector: an llava-hf checkpoint runs as VisionZip with no training.
        llava_projector={"linear_1": "fc1", "linear_2": "fc2"},
        bench_sweep=_visionzip_sweep,
        compressor_flops=flops.visionzip_flops,
    ),
}


def model_type_of(obj) -> ModelType | None:
    """The entry of a model (by its config's model_type) or of a processor (by its class) of this package."""
    if isinstance(obj, transformers.PreTrainedModel):
        return MODEL_TYPES.get(getattr(obj.config, "model_type", None))
    exact = [entry for entry in MODEL_TYPES.values() if type(obj) is entry.processor_class]
    subclass = [entry for entry in MODEL_TYPES.values() if isinstance(obj, entry.processor_class)]
    return (exact or subclass or [None])[0]


def write_remote_code_after_save(obj, folder) -> None:
    """`save_pretrained` hook: every folder a model or processor of this package saves is Hub-ready."""
    entry = model_type_of(obj)
    if entry is not None:
        write_remote_code(folder, entry, None if isinstance(obj, transformers.PreTrainedModel) else obj)


def register_all() -> None:
    # AutoModelForVision2Seq is deprecated in 4.57 and gone in 5.x.
    generation_autos = [AutoModelForImageTextToText]
    if getattr(transformers, "AutoModelForVision2Seq", None) is not None:
        generation_autos.append(transformers.AutoModelForVision2Seq)
    for name, entry in MODEL_TYPES.items():
        AutoConfig.register(name, entry.config_class, exist_ok=True)
        AutoModel.register(entry.config_class, entry.model_class, exist_ok=True)
        for auto_class in generation_autos:
            auto_class.register(entry.config_class, entry.for_generation_class, exist_ok=True)
        AutoProcessor.register(entry.config_class, entry.processor_class, exist_ok=True)
        # TokenPacker-HD's tiler, so a saved processor finds it by its `image_processor_type`.
        if entry.image_processor_class is not None:
            transformers.AutoImageProcessor.register(
                entry.config_class, slow_image_processor_class=entry.image_processor_class, exist_ok=True
            )
    register_v5_names()
    register_after_save(write_remote_code_after_save)


register_all()
