"""Which vision-tower hidden states feed a compressor: one place for layer selection and the CLS drop."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VisionFeatures:
    """Patch features of one batch of views, without CLS/prefix tokens.

    single_level: `hidden_states[vision_feature_layer]`, shape (views, patches, vision_width).
    multi_level: the `multi_level_feature_layers` concatenated on channels in the given order,
        shape (views, patches, len(layers) * vision_width); `None` when not asked for.
    """

    single_level: torch.Tensor
    multi_level: torch.Tensor | None = None


def select_vision_features(
    hidden_states: tuple[torch.Tensor, ...],
    vision_feature_layer: int,
    num_patches: int,
    multi_level_feature_layers: list[int] | None = None,
) -> VisionFeatures:
    """Pick the layers a compressor reads and drop every token that is not a patch.

    `hidden_states` is the tower's `(embeddings, layer_1, ..., layer_L)` tuple. CLIP puts one CLS token in front
    of the patches, SigLIP none; both keep only the last `num_patches` tokens, as the originals' `'patch'` mode.
    """

    def patches(layer: int) -> torch.Tensor:
        states = hidden_states[layer]
        num_prefix = states.shape[1] - num_patches
        if num_prefix < 0:
            raise ValueError(
                f"The vision tower returned {states.shape[1]} tokens at layer {layer}, fewer than the "
                f"{num_patches} patches its config promises; check image_size and patch_size."
            )
        return states[:, num_prefix:]

    single = patches(vision_feature_layer)
    multi = None
    if multi_level_feature_layers:
        multi = torch.cat([patches(layer) for layer in multi_level_feature_layers], dim=-1)
    return VisionFeatures(single_level=single, multi_level=multi)
