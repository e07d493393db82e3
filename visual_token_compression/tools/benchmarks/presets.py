"""Benchmark geometries: one vision tower and one LLM shape, shared by the baseline and every method."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import CONFIG_MAPPING

from ...configuration.base import DEFAULT_VISION_CONFIG
from ...registry import MODEL_TYPES
from ..tiny import tiny_text_config, tiny_vision_config

# ViT-B/16 at 384 px: the 24 x 24 = 576-patch grid of CLIP-L/14-336 (so every method's settings apply unchanged)
# at a third of its FLOPs, so that the `small` preset runs on a 2-core CPU in about 20 minutes.
SMALL_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 384,
    "patch_size": 16,
}
# SmolLM2-135M's shape: a ~135M-parameter Llama that runs a CLIP-L/14-336 prefill on a laptop CPU in seconds.
SMALL_LLM = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class Preset:
    """What to build and how often to measure it.

    The rows of each method are its entry in `sweeps.BENCH_SWEEPS`, given the preset's name and grid.
    `method_kwargs` holds config overrides per model type that every row of that type gets (the tiny widths).
    """

    name: str
    vision: dict
    text_model_type: str
    text: dict
    text_tokens: int
    method_kwargs: dict = field(default_factory=dict)
    repeats: int = 5
    decode_repeats: int = 2
    new_tokens: int = 16
    # Prefill rounds a row may get in all while its overhead (prefill over the sum of its parts) is neither known to
    # +-1.5 % nor clearly on one side of the 3 % budget (`runner.overhead_settled`).
    max_overhead_repeats: int = 15

    def vision_config(self):
        values = dict(self.vision)
        return CONFIG_MAPPING[values.pop("model_type")](**values)

    def text_config(self):
        return CONFIG_MAPPING[self.text_model_type](**self.text)


def _tiny() -> Preset:
    vision = tiny_vision_config().to_dict()
    text = tiny_text_config().to_dict()
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")
    text_keys = keys[:4] + ("num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings")
    return Preset(
        name="tiny",
        vision={"model_type": "clip_vision_model", **{k: vision[k] for k in keys}},
        text_model_type="llama",
        text={k: text[k] for k in text_keys},
        text_tokens=16,
        method_kwargs={name: entry.tiny_config_kwargs for name, entry in MODEL_TYPES.items()},
        repeats=3,
        decode_repeats=1,
        new_tokens=4,
        max_overhead_repeats=3,  # tiny models are all overhead: its ratio says nothing worth more rounds
    )


PRESETS: dict[str, Preset] = {
    "tiny": _tiny(),
    "small": Preset(
        name="small",
        vision=SMALL_VISION,
        text_model_type="llama",
        text=SMALL_LLM,
        text_tokens=64,
        repeats=5,  # every speed-up divides by the baseline's median: 3 rounds left it 8 % apart between two runs
        decode_repeats=1,
        new_tokens=8,
    ),
    # Vicuna-7B (transformers' LlamaConfig defaults) behind CLIP-L/14-336: the released checkpoints' geometry.
    "llava-7b": Preset(
        name="llava-7b",
        vision=DEFAULT_VISION_CONFIG,
        text_model_type="llama",
        text={},
        text_tokens=64,
        repeats=10,
        decode_repeats=3,
        new_tokens=32,
    ),
}
