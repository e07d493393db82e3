"""Checkpoint conversion: original TokenPacker(-HD) / QueCC / VoCo-LLaMA / SeTok checkpoints and llava-hf models.

Each method module exposes a pure `convert_state_dict()` (raises on unknown keys) and an `OriginalConverter`, its
model type's entry in `converters.CONVERTERS`; `checkpoint.convert_checkpoint` writes a `save_pretrained` folder
with it.
`convert_cli` is `vtc convert`. `conversion_scripts/` holds runnable wrappers.
"""

from .checkpoint import convert_checkpoint
from .cli import convert_cli
from .common import load_original_state_dict
from .llava_hf import convert_llava_hf

__all__ = ["convert_checkpoint", "convert_cli", "convert_llava_hf", "load_original_state_dict"]
