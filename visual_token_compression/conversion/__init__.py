"""Checkpoint conversion: original TokenPacker(-HD) / QueCC / VoCo-LLaMA / SeTok checkpoints and llava-hf models.

Each method module exposes a pure `convert_state_dict()` (raises on unknown keys) and an `OriginalConverter`, the
registry's `ModelType.converter`; `common.convert_checkpoint` writes a `save_pretrained` folder with it.
`convert_cli` is `vtc convert`. `conversion_scripts/` holds runnable wrappers.
"""

from .cli import convert_cli
from .common import load_original_state_dict
from .llava_hf import convert_llava_hf

__all__ = ["convert_cli", "convert_llava_hf", "load_original_state_dict"]
