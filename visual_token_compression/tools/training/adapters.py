"""LoRA on the LLM only, and bitsandbytes quantization of the LLM only.

The vision tower's attention also has `q_proj`/`k_proj`/`v_proj`, so LoRA targets are a regex anchored on the
language model; quantization skips the tower, the compressor and the head, which are small and precision-sensitive.
"""

from __future__ import annotations

import torch

LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
UNQUANTIZED_MODULES = ["model.vision_tower", "model.compressor", "lm_head"]


def llm_lora_config(
    r: int = 64, lora_alpha: int | None = None, lora_dropout: float = 0.05, train_compressor: bool = True
):
    """A PEFT `LoraConfig` adapting the LLM's projections; the compressor stays fully trainable by default."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha or 2 * r,
        lora_dropout=lora_dropout,
        target_modules=rf".*\.language_model\..*\.({'|'.join(LLM_PROJECTIONS)})",
        modules_to_save=["compressor"] if train_compressor else None,
        task_type="CAUSAL_LM",
    )


def quantization_config(bits: int = 4, compute_dtype: torch.dtype = torch.float32):
    """`BitsAndBytesConfig` for 4-bit NF4 (QLoRA) or 8-bit loading of the LLM; the rest stays unquantized."""
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=UNQUANTIZED_MODULES,
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=UNQUANTIZED_MODULES)
    raise ValueError(f"bits must be 4 or 8, not {bits}.")
