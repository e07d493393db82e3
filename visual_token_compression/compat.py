"""The few places where transformers 4.57 and 5.x need different spellings of the same thing."""

from __future__ import annotations

import transformers
from packaging import version

TRANSFORMERS_V5 = version.parse(transformers.__version__).major >= 5

# 5.x maps each tied parameter to its source; 4.x lists the tied parameters only.
TIED_LM_HEAD = (
    {"lm_head.weight": "model.language_model.embed_tokens.weight"} if TRANSFORMERS_V5 else ["lm_head.weight"]
)


def flat_vision_tower_key_mapping(model) -> dict[str, str]:
    """4.57 loading: `key_mapping` that puts 5.x's flat tower keys back under the tower's `vision_model.` level.

    5.x builds CLIP/SigLIP vision models without that level and saves them so (`model.vision_tower.embeddings.*`);
    4.57 would drop those keys and leave the tower random. Empty where the tower has no such level.
    """
    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    if TRANSFORMERS_V5 or not hasattr(tower, "vision_model"):
        return {}
    return {r"^((?:model\.)?vision_tower\.)(?!vision_model\.)": r"\1vision_model."}


def register_v5_names() -> None:
    """4.57: resolve the class names 5.x writes into saved folders.

    5.x saves a generic fast tokenizer as `TokenizersBackend`, a class 4.57 lacks; there it is
    `PreTrainedTokenizerFast`, so a subclass of that name is registered for AutoTokenizer to find.
    """
    if TRANSFORMERS_V5:
        return
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from .configuration.base import CompressedVLMConfig

    alias = type("TokenizersBackend", (PreTrainedTokenizerFast,), {"__doc__": register_v5_names.__doc__})
    AutoTokenizer.register(CompressedVLMConfig, fast_tokenizer_class=alias, exist_ok=True)
