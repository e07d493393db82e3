"""The cache argument and output field under transformers 5.24's name (`cache`), with `past_key_values` still
accepted as transformers' own models accept it, and saved tokenizers named so that 4.57 reads them too."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from transformers import AutoProcessor

from tests.helpers import VARIANT_IDS, VARIANTS, chat, sample_image
from visual_token_compression.compat import CACHE_NAME
from visual_token_compression.tools.tiny import build_tiny


@pytest.fixture(scope="module", params=VARIANTS, ids=VARIANT_IDS)
def prefilled(request):
    """A tiny model, a prompt and the prefill's output (with its cache) of every variant."""
    name, kwargs = request.param
    model, processor = build_tiny(name, **kwargs)
    inputs = processor(images=sample_image(), text=chat(processor, "What is it?"), return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, use_cache=True)
    return model, inputs, outputs


def next_step(model, inputs, outputs) -> dict:
    token = outputs.logits[:, -1:].argmax(-1)
    # SeTok returns the mask its LLM used (unfilled image slots removed): decoding continues from that one.
    used_mask = getattr(outputs, "attention_mask", None)
    used_mask = inputs["attention_mask"] if used_mask is None else used_mask
    mask = torch.cat([used_mask, torch.ones_like(token)], 1)
    return {"input_ids": token, "attention_mask": mask}


def test_output_carries_the_cache_under_the_installed_release_name(prefilled):
    _, _, outputs = prefilled
    assert CACHE_NAME in outputs.keys()
    assert outputs[CACHE_NAME].get_seq_length() > 0


def test_decoding_step_takes_the_cache_by_either_name_with_identical_logits(prefilled):
    model, inputs, outputs = prefilled
    step = next_step(model, inputs, outputs)
    cache = outputs[CACHE_NAME]
    with torch.no_grad():
        new_name = model(**step, cache=copy.deepcopy(cache)).logits
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old_name = model(**step, past_key_values=copy.deepcopy(cache)).logits
    assert torch.equal(new_name, old_name)
    deprecations = [w for w in caught if "past_key_values" in str(w.message)]
    # From 5.24 the old name warns, as transformers' own models do; before 5.24 it is the name generate itself uses.
    assert bool(deprecations) == (CACHE_NAME == "cache")


def test_both_cache_names_at_once_are_refused(prefilled):
    model, inputs, outputs = prefilled
    step = next_step(model, inputs, outputs)
    cache = outputs[CACHE_NAME]
    with pytest.raises(ValueError, match="past_key_values"):
        model(**step, cache=copy.deepcopy(cache), past_key_values=copy.deepcopy(cache))


def test_saved_tokenizer_class_is_readable_by_every_supported_release(tmp_path):
    _, processor = build_tiny("tokenpacker")
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    # 5.x would write `TokenizersBackend`, unknown to 4.57 (tests/compat loads such folders there).
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    text = chat(processor, "What is it?")
    assert torch.equal(
        reloaded(images=sample_image(), text=text, return_tensors="pt")["input_ids"],
        processor(images=sample_image(), text=text, return_tensors="pt")["input_ids"],
    )
