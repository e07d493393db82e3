"""The few places where transformers 4.57 and 5.x need different spellings of the same thing."""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import fields
from pathlib import Path

import transformers
from packaging import version
from transformers.modeling_outputs import BaseModelOutputWithPast

TRANSFORMERS_V5 = version.parse(transformers.__version__).major >= 5

# 5.24 renamed `past_key_values` to `cache`, in forward arguments and in model outputs (the old keyword stays a
# deprecated alias until 5.40). The name this release uses, for calls into its models and reads of their outputs.
CACHE_NAME = "cache" if "cache" in {field.name for field in fields(BaseModelOutputWithPast)} else "past_key_values"


def accepts_past_key_values(forward):
    """Let a `forward(..., cache=...)` also take its cache as `past_key_values`.

    From 5.24 through transformers' own deprecation (a warning, as its models do); before 5.24, where generation
    itself passes `past_key_values`, silently. Giving both names is an error on every release.
    """
    if CACHE_NAME == "cache":
        from transformers.utils.deprecation import deprecate_kwarg

        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)(forward)

    @functools.wraps(forward)
    def renamed(*args, **kwargs):
        if "past_key_values" in kwargs:
            if kwargs.get("cache") is not None:
                raise ValueError("Pass the cache as `cache` or as `past_key_values`, not both.")
            kwargs["cache"] = kwargs.pop("past_key_values")
        return forward(*args, **kwargs)

    # These releases' `generate` checks a user's cache argument against the signature under the old name.
    signature = inspect.signature(forward)
    renamed.__signature__ = signature.replace(
        parameters=[
            parameter.replace(name="past_key_values") if parameter.name == "cache" else parameter
            for parameter in signature.parameters.values()
        ]
    )
    return renamed


def output_cache(outputs):
    """The cache a transformers model returned, under whichever name this release gives it."""
    return getattr(outputs, CACHE_NAME)


# 5.x maps each tied parameter to its source; 4.x lists the tied parameters only.
TIED_LM_HEAD = (
    {"lm_head.weight": "model.language_model.embed_tokens.weight"} if TRANSFORMERS_V5 else ["lm_head.weight"]
)

# Tensor parallelism of the LM head, as Llava's (5.x) and Llama's (4.57): column-sharded, logits gathered whole.
LM_HEAD_TP_PLAN = {"lm_head": "colwise_gather_output" if TRANSFORMERS_V5 else "colwise_rep"}


def flat_vision_tower_key_mapping(model) -> dict[str, str]:
    """4.57 loading: `key_mapping` that puts 5.x's flat tower keys back under the tower's `vision_model.` level.

    5.x builds CLIP/SigLIP vision models without that level and saves them so (`model.vision_tower.embeddings.*`);
    4.57 would drop those keys and leave the tower random. Empty where the tower has no such level.
    """
    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    if TRANSFORMERS_V5 or not hasattr(tower, "vision_model"):
        return {}
    return {r"^((?:model\.)?vision_tower\.)(?!vision_model\.)": r"\1vision_model."}


def write_portable_tokenizer_class(folder: str | Path) -> None:
    """Name a saved generic fast tokenizer so that every supported release loads it.

    5.x saves it as `TokenizersBackend`, a class 4.57 lacks. `PreTrainedTokenizerFast` is that class on 4.57 and an
    alias of `TokenizersBackend` on 5.x, so the folder loads on both, also as remote code on 4.57, where
    `auto.register_v5_tokenizer_name` never runs because this package is not installed.
    """
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("tokenizer_class") == "TokenizersBackend":
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
