"""Tiny configs and an in-memory tokenizer, so tests and the demo build real models without any download."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CONFIG_MAPPING, PreTrainedTokenizerFast

from ..registry import MODEL_TYPES

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# The in-memory tokenizers belong to no checkpoint; a LLaMA-sized limit keeps every test and demo prompt whole.
TINY_MODEL_MAX_LENGTH = 4096


def in_memory_tokenizer(
    backend: Tokenizer, bos_id: int, tokens: tuple[str, ...], extra_special_tokens: tuple[str, ...]
) -> PreTrainedTokenizerFast:
    """`backend` with a BOS on every text, LLaMA's special tokens, left padding, then `tokens` and the special
    `extra_special_tokens` added in that order."""
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=TINY_MODEL_MAX_LENGTH,
        padding_side="left",  # for batched generation; training collators choose their own side
    )
    if tokens:
        tokenizer.add_tokens(list(tokens))
    tokenizer.add_tokens(list(extra_special_tokens), special_tokens=True)
    return tokenizer


def byte_tokenizer(extra_special_tokens: tuple[str, ...] = ("<image>",)) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: every text round-trips, and it is built in memory."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return in_memory_tokenizer(backend, vocab["<s>"], (), extra_special_tokens)


def word_tokenizer(texts: list[str], extra_special_tokens: tuple[str, ...] = ("<image>",)) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of `texts` (split on spaces and punctuation), built in memory.

    For small closed-vocabulary tasks (the demo): every answer word is one token, so a tiny LLM learns quickly.
    Newlines are tokens too (layout separators), where whitespace splitting would drop them.
    """
    splitter = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    words = sorted({word for text in texts for word, _ in splitter.pre_tokenize_str(text)})
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = splitter
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return in_memory_tokenizer(backend, vocab["<s>"], ("\n",), extra_special_tokens)


def tiny_vision_config(kind: str = "clip", image_size: int = 32, patch_size: int = 4, num_hidden_layers: int = 4):
    """A 32-wide CLIP, SigLIP or DINOv2 tower (8x8 patches by default)."""
    model_type = {"clip": "clip_vision_model", "siglip": "siglip_vision_model", "dinov2": "dinov2"}[kind]
    return CONFIG_MAPPING[model_type](
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )


def tiny_text_config(kind: str = "llama", vocab_size: int = 512):
    """A 2-layer, 32-wide Llama or Qwen2 decoder with grouped-query attention."""
    return CONFIG_MAPPING[kind](
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


def build_tiny(
    model_type: str = "tokenpacker", vision: str = "clip", text: str = "llama", seed: int = 0, **config_kwargs
):
    """(model, processor) of a randomly initialised tiny VLM of the given method, in eval mode."""
    entry = MODEL_TYPES[model_type]
    config_kwargs = {**entry.tiny_config_kwargs, **config_kwargs}
    special_tokens = entry.special_tokens_for(config_kwargs)
    tokenizer = byte_tokenizer(("<image>", *special_tokens.values()))
    special_ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in special_tokens.items()}
    config_kwargs = {**special_ids, **config_kwargs}
    config = entry.config_class(
        vision_config=tiny_vision_config(vision),
        text_config=tiny_text_config(text, vocab_size=len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = entry.for_generation_class(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    processor = entry.processor_class.from_config(config, tokenizer)
    return model, processor
