"""Which parameters each training stage updates, and the originals' optimiser defaults per stage.

Stage 1 (compressor alignment): only the compressor (with its projection to the LLM width) learns; the vision
tower and the LLM are frozen. Stage 2 (instruction tuning): compressor + LLM (+ head) learn; the tower stays frozen.
Stage 3 (video, for models that take videos: VoCo-LLaMA's continued training on video QA) trains stage 2's modules,
from an image checkpoint.

TokenPacker-HD with Osprey's regions (`vtc train --regions`) has its own stages after stage 1: stage 2 trains only
the region extractor, stage 3 everything but the tower (stage2-osprey-hd.sh and stage3-osprey-hd.sh).
"""

from __future__ import annotations

import torch

from ...compat import TRANSFORMERS_V5

VIDEO_STAGE = 3
STAGE_TRAINABLE = {
    1: ("model.compressor.",),
    2: ("model.compressor.", "model.language_model.", "lm_head."),
    VIDEO_STAGE: ("model.compressor.", "model.language_model.", "lm_head."),
}
REGION_STAGE_TRAINABLE = {
    2: ("model.compressor.region_extractor.",),
    3: ("model.compressor.", "model.language_model.", "lm_head."),
}

# TokenPacker / QueCC / LLaVA-1.5 scripts: lr 1e-3 then 2e-5, cosine, warmup 0.03, no weight decay, bf16 on GPUs.
# (transformers 5 reads a float `warmup_steps` below 1 as a ratio; 4.57 spells it `warmup_ratio`.)
_WARMUP = {"warmup_steps": 0.03} if TRANSFORMERS_V5 else {"warmup_ratio": 0.03}
STAGE_TRAINING_DEFAULTS = {
    1: {"learning_rate": 1e-3, "lr_scheduler_type": "cosine", **_WARMUP, "weight_decay": 0.0},
    2: {"learning_rate": 2e-5, "lr_scheduler_type": "cosine", **_WARMUP, "weight_decay": 0.0},
    # LLaMA-VID's video stage, which VoCo-LLaMA's video results match (docs/voco_llama.md): 1 epoch.
    VIDEO_STAGE: {
        "learning_rate": 2e-5,
        "lr_scheduler_type": "cosine",
        **_WARMUP,
        "weight_decay": 0.0,
        "num_train_epochs": 1,
    },
}
# Osprey's region stages: 5e-4 for the region extractor alone, then 2e-5 for everything but the tower.
REGION_STAGE_TRAINING_DEFAULTS = {
    2: {"learning_rate": 5e-4, "lr_scheduler_type": "cosine", **_WARMUP, "weight_decay": 0.0},
    3: {"learning_rate": 2e-5, "lr_scheduler_type": "cosine", **_WARMUP, "weight_decay": 0.0},
}


def apply_stage(model: torch.nn.Module, stage: int, regions: bool = False) -> list[str]:
    """Freeze everything but the stage's modules (of the region recipe with `regions`); returns the names of the
    trainable parameters."""
    table = {1: STAGE_TRAINABLE[1], **REGION_STAGE_TRAINABLE} if regions else STAGE_TRAINABLE
    if stage not in table:
        raise ValueError(f"stage must be one of {sorted(table)}{' with --regions' if regions else ''}, not {stage!r}.")
    if stage == VIDEO_STAGE and not regions:
        check_takes_videos(model)
    prefixes = table[stage]
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(prefixes))
        if parameter.requires_grad:
            trainable.append(name)
    if not trainable:
        raise ValueError(f"Stage {stage} found no parameter under {prefixes}; is this a compressed VLM?")
    return trainable


def check_takes_videos(model: torch.nn.Module):
    """Stage 3 trains on videos: refuse, before any data is read, a model that cannot take them."""
    if "video" not in getattr(model, "input_modalities", ()):
        raise ValueError(
            f"Stage {VIDEO_STAGE} continues an image model on video QA, but {type(model).__name__} takes no videos "
            f"(its input_modalities are {getattr(model, 'input_modalities', None)}); use a model type that takes "
            "videos. Stages 1 and 2 train every model type (with --regions, stage 3 is TokenPacker-HD's region stage)."
        )
    if getattr(model.config, "video_token_id", None) is None:
        raise ValueError(
            f"Stage {VIDEO_STAGE} trains on videos, but this {model.config.model_type} model has no video_token_id "
            "(a checkpoint saved before its type took videos): compose or convert it again with this version, "
            "which adds the <video> token."
        )


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
