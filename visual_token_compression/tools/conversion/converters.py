"""`vtc convert`'s table: for every registered model type, how its original checkpoints convert and which of its
compressor modules take the weights of an llava-hf projector. `tests/test_registry.py` checks that both cover every
entry of the registry."""

from __future__ import annotations

from .common import OriginalConverter
from .quecc import QueCCConverter
from .setok import SeTokConverter
from .tokenpacker import TokenPackerConverter
from .voco_llama import VoCoLlamaConverter

# `vtc convert <model type>`; None: no original release to convert (no subcommand).
CONVERTERS: dict[str, OriginalConverter | None] = {
    "setok": SeTokConverter(),
    "quecc": QueCCConverter(),
    "voco_llama": VoCoLlamaConverter(),
    "tokenpacker": TokenPackerConverter(),
    "visionzip": None,  # training-free: its released code patches LLaVA at run time, there are no weights of its own
}

# `vtc convert llava-hf`: llava-hf projector module -> compressor module that takes its weights ({}: dropped, the
# compressor starts fresh). VisionZip's compressor is LLaVA-1.5's projector, so it runs with no training.
LLAVA_PROJECTORS: dict[str, dict[str, str]] = {
    "setok": {},
    "quecc": {},
    "voco_llama": {},
    "tokenpacker": {},
    "visionzip": {"linear_1": "fc1", "linear_2": "fc2"},
}
