"""Which vision-tower hidden states feed a compressor: the one place for layer selection and the CLS drop."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VisionFeatures:
    """Features of one batch of views: patches only, or CLS first and then the patches (`with_class_token`).

    single_level: `hidden_states[vision_feature_layer]`, shape (views, tokens, vision_width).
    multi_level: the `multi_level_feature_layers` concatenated on channels in the given order,
        shape (views, tokens, len(layers) * vision_width); `None` when not asked for.
    layer_index: the index of `single_level` in `hidden_states` (0: the embeddings), so that a compressor that
        recomputes something of the tower layer that produced it (VisionZip's CLS attention) finds that layer,
        `layer_index - 1` of the encoder, and its input, `hidden_states[layer_index - 1]`.
    """

    single_level: torch.Tensor
    multi_level: torch.Tensor | None = None
    layer_index: int | None = None


def select_vision_features(
    hidden_states: tuple[torch.Tensor, ...],
    vision_feature_layer: int,
    num_patches: int,
    multi_level_feature_layers: list[int] | None = None,
    with_class_token: bool = False,
) -> VisionFeatures:
    """Pick the layers a compressor reads and drop every token that is not a patch (or keep CLS in front of them).

    `hidden_states` is the tower's `(embeddings, layer_1, ..., layer_L)` tuple. CLIP puts one CLS token in front
    of the patches, SigLIP none, DINOv2 CLS (and registers where configured); by default only the last
    `num_patches` tokens are kept, as the originals' `'patch'` mode. `with_class_token` keeps CLS too and requires
    that the tower put exactly one token in front of the patches.
    """

    def tokens(layer: int) -> torch.Tensor:
        states = hidden_states[layer]
        num_prefix = states.shape[1] - num_patches
        if with_class_token and num_prefix != 1:
            raise ValueError(
                f"The compressor expects CLS + {num_patches} patches per view, the tower returned {states.shape[1]} "
                f"tokens at layer {layer}; check image_size and patch_size (and that the tower has a CLS token)."
            )
        if num_prefix < 0:
            raise ValueError(
                f"The vision tower returned {states.shape[1]} tokens at layer {layer}, fewer than the "
                f"{num_patches} patches its config promises; check image_size and patch_size."
            )
        return states if with_class_token else states[:, num_prefix:]

    single = tokens(vision_feature_layer)
    multi = None
    if multi_level_feature_layers:
        multi = torch.cat([tokens(layer) for layer in multi_level_feature_layers], dim=-1)
    return VisionFeatures(
        single_level=single, multi_level=multi, layer_index=vision_feature_layer % len(hidden_states)
    )
