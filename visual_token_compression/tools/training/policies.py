"""Which parameters each training stage updates, and the originals' optimiser defaults per stage.

Stage 1 (compressor alignment): only the compressor (with its projection to the LLM width) learns; the vision
tower and the LLM are frozen. Stage 2 (instruction tuning): compressor + LLM (+ head) learn; the tower stays frozen.
"""

from __future__ import annotations

import torch

from ...compat import TRANSFORMERS_V5

STAGE_TRAINABLE = {1: ("model.compressor.",), 2: ("model.compressor.", "model.language_model.", "lm_head.")}

# TokenPacker / QueCC / LLaVA-1.5 scripts: lr 1e-3 then 2e-5, cosine, warmup 0.03, no weight decay, bf16 on GPUs.
# (transformers 5 reads a float `warmup_steps` below 1 as a ratio; 4.57 spells it `warmup_ratio`.)
_WARMUP = {"warmup_steps": 0.03} if TRANSFORMERS_V5 else {"warmup_ratio": 0.03}
STAGE_TRAINING_DEFAULTS = {
    1: {"learning_rate": 1e-3, "lr_scheduler_type": "cosine", **_WARMUP, "weight_decay": 0.0},
    2: {"learning_rate": 2e-5, "lr_scheduler_type": "cosine", **_WARMUP, "weight_decay": 0.0},
}


def apply_stage(model: torch.nn.Module, stage: int) -> list[str]:
    """Freeze everything but the stage's modules; returns the names of the trainable parameters."""
    if stage not in STAGE_TRAINABLE:
        raise ValueError(f"stage must be 1 or 2, not {stage!r}.")
    prefixes = STAGE_TRAINABLE[stage]
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(prefixes))
        if parameter.requires_grad:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"Stage {stage} found no parameter under {prefixes}; is this a compressed VLM?")
    return trainable


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
