"""VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467): keep the tokens CLS attends to most, merge the rest by key
similarity into a few contextual tokens, then LLaVA's projector. Nothing is learned besides the projector."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin

from ..configuration.visionzip import VisionZipConfig
from .base import CompressedVLMForConditionalGeneration, CompressedVLMModel
from .layers import GeluMLP
from .vision import select_vision_features


@dataclass
class VisionZipSelection:
    """What VisionZip made of a batch of views. Token index 0 is CLS, index i >= 1 is patch i - 1 in raster order.

    tokens: (views, D + C, vision_width), before the projector: CLS, the D - 1 dominant patches in ascending index,
        then the C contextual tokens.
    dominant_indices: (views, D) the token of each of the first D rows (ascending, so CLS first).
    target_indices: (views, C) the token each contextual row starts from.
    merged_indices: (views, M) every other token, ascending; M = tokens - D - C.
    assignment: (views, M) the contextual row (0..C-1) each of them is averaged into.
    """

    tokens: torch.Tensor
    dominant_indices: torch.Tensor
    target_indices: torch.Tensor
    merged_indices: torch.Tensor
    assignment: torch.Tensor


def cls_attention_and_keys(layer: nn.Module, layer_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLS query's attention probabilities (views, heads, tokens) and the keys averaged over heads (views, tokens,
    head_dim) of one CLIP encoder layer, recomputed from that layer's input.

    Recomputed rather than read from the tower: sdpa and flash attention return no weights, and only one query row
    is needed instead of every layer's full map. Same maths as CLIP's attention; the softmax runs in fp32.
    """
    attention = layer.self_attn
    hidden = layer.layer_norm1(layer_input)
    views, num_tokens, _ = hidden.shape
    query = (attention.q_proj(hidden[:, :1]) * attention.scale).view(views, -1, 1, attention.head_dim)
    keys = attention.k_proj(hidden).view(views, num_tokens, -1, attention.head_dim).transpose(1, 2)
    probabilities = (query @ keys.transpose(-1, -2)).squeeze(2).float().softmax(-1)
    return probabilities, keys.mean(1)


def gather_tokens(states: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(views, tokens, width) rows at (views, k) indices -> (views, k, width)."""
    return states.gather(1, indices.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


class VisionZipCompressor(GeluMLP):
    """CLS-inclusive tokens of one layer -> D + C tokens at the LLM width.

    The projector is LLaVA's `mlp2x_gelu`, inherited so that its weights keep LLaVA's layout (`fc1`, `fc2` for
    `mm_projector.0`, `mm_projector.2`). The selection has no parameters.
    """

    def __init__(self, config: VisionZipConfig):
        width = config.text_config.hidden_size
        super().__init__(config.vision_config.hidden_size, width, width)
        self.dominant_tokens = config.dominant_tokens
        self.contextual_tokens = config.contextual_tokens

    def select(self, states: torch.Tensor, cls_attention: torch.Tensor, keys: torch.Tensor) -> VisionZipSelection:
        """states (views, tokens, E), cls_attention (views, heads, tokens), keys (views, tokens, head_dim)."""
        views, num_tokens, _ = states.shape
        dominant, contextual = self.dominant_tokens, self.contextual_tokens
        num_remaining = num_tokens - dominant
        if num_remaining < contextual:
            raise ValueError(
                f"VisionZip needs at least {dominant + contextual} tokens per view, the tower gave {num_tokens}."
            )
        device = states.device

        # Dominant: CLS plus the patches with the highest head-summed CLS attention (CLS->CLS is not a candidate).
        # A stable sort gives ties to the lower patch index on every device; the original's topk leaves them open.
        ranked = cls_attention[:, :, 1:].sum(1).sort(dim=1, descending=True, stable=True).indices
        cls = torch.zeros(views, 1, dtype=torch.long, device=device)
        dominant_indices = torch.cat([cls, ranked[:, : dominant - 1] + 1], dim=1).sort(dim=1).values
        is_dominant = torch.zeros(views, num_tokens, dtype=torch.int8, device=device).scatter(1, dominant_indices, 1)
        # The other tokens in ascending index (a stable sort puts the zeros first, in order).
        remaining = is_dominant.argsort(dim=1, stable=True)[:, :num_remaining]

        # Targets: positions 0, step, 2 step, ... of that list (not of the image grid), the same for every view.
        step = max(1, num_remaining // contextual)
        is_target = torch.zeros(num_remaining, dtype=torch.int8, device=device)
        is_target[::step][:contextual] = 1
        num_merged = num_remaining - contextual
        positions = is_target.argsort(stable=True)  # the merged positions, then the targets, each ascending
        merged_positions, target_positions = positions[:num_merged], positions[num_merged:]
        target_indices, merged_indices = remaining[:, target_positions], remaining[:, merged_positions]

        # Each other token joins the target with the most similar head-averaged key (first maximum on ties).
        metric = gather_tokens(keys, remaining)
        metric = metric / metric.norm(dim=-1, keepdim=True)
        similarity = metric[:, merged_positions] @ metric[:, target_positions].transpose(1, 2)
        assignment = similarity.argmax(dim=-1)

        # Contextual token = its target + the mean of its members (weight 1 each; just the target when it has none).
        members = F.one_hot(assignment, contextual).to(states.dtype)
        counts = members.sum(1).clamp(min=1).unsqueeze(-1)
        merged = members.transpose(1, 2) @ gather_tokens(states, merged_indices) / counts
        tokens = torch.cat(
            [gather_tokens(states, dominant_indices), gather_tokens(states, target_indices) + merged], dim=1
        )
        return VisionZipSelection(tokens, dominant_indices, target_indices, merged_indices, assignment)

    def forward(self, states: torch.Tensor, cls_attention: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return super().forward(self.select(states, cls_attention, keys).tokens)


class VisionZipModel(CompressedVLMModel):
    config_class = VisionZipConfig
    compressor_class = VisionZipCompressor

    def __init__(self, config: VisionZipConfig):
        super().__init__(config)
        layer = (self.vision_layers or [None])[0]
        attention = getattr(layer, "self_attn", None)
        if not (hasattr(layer, "layer_norm1") and all(hasattr(attention, name) for name in ("q_proj", "k_proj"))):
            raise ValueError(
                "VisionZip recomputes the CLS attention of a CLIP encoder layer (encoder.layers[i].layer_norm1, "
                f"self_attn.q_proj/k_proj); the {type(self.vision_tower).__name__} tower is built differently."
            )

    @property
    def vision_layers(self) -> nn.ModuleList | None:
        """The tower's encoder layers (transformers 5 has no `vision_model` level in CLIPVisionModel, 4.57 has)."""
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)
        return getattr(getattr(tower, "encoder", None), "layers", None)

    def visionzip_inputs(
        self, vision_hidden_states: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CLS-inclusive states, CLS attention, head-averaged keys) of the selected layer, the attention recomputed
        from that layer's input (the hidden state before it)."""
        select = functools.partial(
            select_vision_features,
            vision_hidden_states,
            num_patches=self.config.vision_grid_size**2,
            with_class_token=True,
        )
        features = select(self.config.vision_feature_layer)
        layer = features.layer_index - 1  # the encoder layer that produced them (the config refuses the embeddings)
        cls_attention, keys = cls_attention_and_keys(self.vision_layers[layer], select(layer).single_level)
        return features.single_level, cls_attention, keys

    def compress(self, vision_hidden_states: tuple[torch.Tensor, ...], **compressor_inputs) -> torch.Tensor:
        """The base's layer selection with CLS kept, and the CLS attention VisionZip ranks the patches by."""
        return self.compressor(*self.visionzip_inputs(vision_hidden_states))


class VisionZipForConditionalGeneration(CompressedVLMForConditionalGeneration, GenerationMixin):
    config_class = VisionZipConfig
    model_class = VisionZipModel
