"""The registry of model types: one entry per method, with its classes and the few facts every tool shares.

Pure data over the configuration, modeling and processing layers, which never import it. Registration with the
Auto classes happens in `auto.py`; what a single tool needs about a method lives in that tool's own table, keyed by
model type (`tools/conversion/converters.py`, `tools/benchmarks/sweeps.py`), and a test checks that each table
covers every entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers

from .configuration.base import CompressedVLMConfig
from .configuration.quecc import QueCCConfig
from .configuration.setok import SeTokConfig
from .configuration.tokenpacker import TokenPackerConfig
from .configuration.visionzip import VisionZipConfig
from .configuration.voco_llama import VoCoLlamaConfig
from .modeling.base import CompressedVLMForConditionalGeneration, CompressedVLMModel
from .modeling.quecc import QueCCForConditionalGeneration, QueCCModel
from .modeling.setok import SeTokForConditionalGeneration, SeTokModel
from .modeling.tokenpacker import TokenPackerForConditionalGeneration, TokenPackerModel
from .modeling.visionzip import VisionZipForConditionalGeneration, VisionZipModel
from .modeling.voco_llama import VoCoLlamaForConditionalGeneration, VoCoLlamaModel
from .processing.base import CompressedVLMProcessor
from .processing.quecc import QueCCProcessor
from .processing.setok import SeTokProcessor
from .processing.tokenpacker import TokenPackerProcessor
from .processing.tokenpacker_hd import TokenPackerImageProcessor
from .processing.visionzip import VisionZipProcessor
from .processing.voco_llama import VoCoLlamaProcessor


@dataclass(frozen=True)
class ModelType:
    config_class: type[CompressedVLMConfig]
    model_class: type[CompressedVLMModel]
    for_generation_class: type[CompressedVLMForConditionalGeneration]
    processor_class: type[CompressedVLMProcessor]
    # Config overrides that make the method fit `tools/tiny.py`'s 32-wide towers and LLMs (tests, demo).
    tiny_config_kwargs: dict = field(default_factory=dict)
    # Special tokens besides `<image>` the method adds to an LLM's tokenizer: config field -> token.
    special_tokens: dict = field(default_factory=dict)
    # This package's image processor the method may use (TokenPacker-HD's tiler), registered and bundled with it.
    image_processor_class: type | None = None
    # Special tokens only some configurations use: config field -> (token, the config field that switches it on).
    optional_special_tokens: dict = field(default_factory=dict)

    def special_tokens_for(self, config_kwargs: dict) -> dict[str, str]:
        """The special tokens a model built with these config fields needs: config field -> token."""
        switched = {
            name: token for name, (token, switch) in self.optional_special_tokens.items() if config_kwargs.get(switch)
        }
        return {**self.special_tokens, **switched}


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
    ),
    "quecc": ModelType(QueCCConfig, QueCCModel, QueCCForConditionalGeneration, QueCCProcessor),
    "voco_llama": ModelType(
        VoCoLlamaConfig,
        VoCoLlamaModel,
        VoCoLlamaForConditionalGeneration,
        VoCoLlamaProcessor,
        # `<video>`: one video frame's placeholders (each frame is compressed like an image).
        special_tokens={"voco_token_id": "<voco>", "video_token_id": "<video>"},
    ),
    "tokenpacker": ModelType(
        TokenPackerConfig,
        TokenPackerModel,
        TokenPackerForConditionalGeneration,
        TokenPackerProcessor,
        tiny_config_kwargs={"compressor_head_dim": 8},
        image_processor_class=TokenPackerImageProcessor,
        # TokenPacker-HD with Osprey's region extractor: each region takes one `<mask>` token.
        optional_special_tokens={"mask_token_id": ("<mask>", "use_region_extractor")},
    ),
    "visionzip": ModelType(
        VisionZipConfig,
        VisionZipModel,
        VisionZipForConditionalGeneration,
        VisionZipProcessor,
        # CLS + 11 dominant patches + 4 contextual tokens of the 8 x 8 tiny grid (the fixtures' g8 setting).
        tiny_config_kwargs={"dominant_tokens": 12, "contextual_tokens": 4},
    ),
}


def model_type_of(obj) -> ModelType | None:
    """The entry of a model (by its config's model_type) or of a processor (by its class) of this package."""
    if isinstance(obj, transformers.PreTrainedModel):
        return MODEL_TYPES.get(getattr(obj.config, "model_type", None))
    exact = [entry for entry in MODEL_TYPES.values() if type(obj) is entry.processor_class]
    subclass = [entry for entry in MODEL_TYPES.values() if isinstance(obj, entry.processor_class)]
    return (exact or subclass or [None])[0]
