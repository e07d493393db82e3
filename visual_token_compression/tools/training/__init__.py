"""Training: LLaVA-format data, stage policies and the `vtc train` entry point."""

from .data import CompressedVLMDataCollator, SampleError, load_training_dataset
from .policies import STAGE_TRAINABLE, STAGE_TRAINING_DEFAULTS, apply_stage
from .templates import TEMPLATES

__all__ = [
    "STAGE_TRAINABLE",
    "STAGE_TRAINING_DEFAULTS",
    "TEMPLATES",
    "CompressedVLMDataCollator",
    "SampleError",
    "apply_stage",
    "load_training_dataset",
]
