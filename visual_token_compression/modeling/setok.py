"""SeTok (Wu et al., ICLR 2025, arXiv 2406.05127): one token per semantic cluster of patches, a dynamic count.

The processor writes `max_image_tokens` placeholders per image. The model fills the LAST L with the cluster
tokens and removes the unfilled ones before them from the computation: their attention-mask entries are 0 and
position ids count only kept tokens, so every kept position sees exactly what it would see in a sequence with L
placeholders. The kept tokens stay contiguous with the text after the image, so the standard shifted next-token
loss (the model's own, and the one trainers such as TRL compute from the hidden states) is that of the sequence
with L placeholders: the last cluster token predicts the first text token, and an unfilled slot only ever predicts
an image placeholder's label.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache

from ..compat import CACHE_NAME
from ..configuration.setok import SeTokConfig
from .base import (
    CompressedVLMForConditionalGeneration,
    CompressedVLMModel,
    CompressorOutput,
    LanguageModelInputs,
    positions_from_mask,
)
from .layers import GeluMLP
from .setok_clustering import dpc_knn_cluster, sincos_position_encoding_2d
from .vision import VisionFeatures


@dataclass
class SeTokCompressorOutput(CompressorOutput):
    """image_features: (views, max_image_tokens, text_hidden), each view's `num_tokens` cluster tokens in its last
    slots, zeros before them. token_mask: (views, max_image_tokens) 1 on the filled (last `num_tokens`) slots.
    cluster_tokens: (views, L, token_feat_dim) the SeTok tokens before the projector, first in each view, L the
    batch's largest count. cluster_labels, scores: (views, patches).
    """

    num_tokens: torch.LongTensor | None = None
    cluster_tokens: torch.FloatTensor | None = None
    cluster_labels: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None


class SeTokAttention(nn.Module):
    """The original's timm-style attention (packed qkv with bias, 1/sqrt(head_dim)), with a boolean mask.

    Always torch SDPA: the cluster masks are block-diagonal, which flash kernels cannot express.
    """

    def __init__(self, width: int, num_heads: int, attention_dropout: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden_states (batch, len, width); attention_mask (batch, 1, len, len), True = may attend."""
        batch, length, width = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        dropout = self.attention_dropout if self.training else 0.0
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout)
        return self.proj_drop(self.proj(output.transpose(1, 2).reshape(batch, length, width)))


class SeTokMLP(nn.Module):
    def __init__(self, width: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(hidden_states)))))


class SeTokEncoder(nn.Module):
    """The original's `Block`, which is not a ViT block: `depth` residual attention layers sharing ONE pre-norm,
    then ONE residual MLP."""

    def __init__(self, config: SeTokConfig, depth: int):
        super().__init__()
        width = config.vision_config.hidden_size
        self.norm1 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            SeTokAttention(
                width, config.compressor_num_heads, config.compressor_attention_dropout, config.compressor_dropout
            )
            for _ in range(depth)
        )
        self.norm2 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = SeTokMLP(width, config.compressor_intermediate_size, config.compressor_dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        for attention in self.layers:
            hidden_states = hidden_states + attention(self.norm1(hidden_states), attention_mask)
        return hidden_states + self.mlp(self.norm2(hidden_states))


class SeTokCompressor(nn.Module):
    """(views, patches, vision_width) -> up to `max_image_tokens` cluster tokens per view at the LLM width.

    Features + 2-D sin-cos positions are clustered (no gradient, fp32); the intra-cluster encoder attends only
    within a cluster (a block-diagonal mask over all patches, so the batch is processed at once) and its outputs
    are mean-pooled per cluster; the inter-cluster encoder mixes the cluster vectors; `out` and the LLaVA
    mlp2x_gelu projector bring them to the LLM width.
    """

    def __init__(self, config: SeTokConfig):
        super().__init__()
        self.config = config
        self.grid = config.vision_grid_size
        self.inner_encoder = SeTokEncoder(config, config.intra_cluster_layers)
        self.inter_encoder = SeTokEncoder(config, config.inter_cluster_layers)
        self.out = nn.Linear(config.vision_config.hidden_size, config.token_feat_dim)
        text_width = config.text_config.hidden_size
        self.projector = GeluMLP(config.token_feat_dim, text_width, text_width)

    def forward(
        self,
        features: VisionFeatures,
        token_mask: torch.Tensor | None = None,
        density_noise: torch.Tensor | None = None,
        assign_masked_tokens: bool = False,
    ) -> SeTokCompressorOutput:
        """`token_mask`, `density_noise` and `assign_masked_tokens` are `dpc_knn_cluster`'s (tests, analysis)."""
        patches = features.single_level
        views, num_patches, width = patches.shape
        if num_patches != self.grid**2:
            raise ValueError(
                f"SeTok expects {self.grid**2} patches per view ({self.grid}x{self.grid}), got {num_patches}."
            )
        positions = sincos_position_encoding_2d(self.grid, self.grid, width, device=patches.device)
        hidden = patches + positions.to(patches.dtype)
        config = self.config
        clusters = dpc_knn_cluster(
            hidden,
            k=config.k,
            threshold=config.threshold,
            fallback_num_tokens=config.fallback_num_tokens,
            max_num_tokens=config.max_image_tokens,
            token_mask=token_mask,
            density_noise=density_noise,
            assign_masked_tokens=assign_masked_tokens,
        )
        labels = clusters.labels
        same_cluster = labels[:, None, :, None] == labels[:, None, None, :]
        hidden = self.inner_encoder(hidden, same_cluster)

        num_clusters = clusters.centers.shape[1]
        membership = (labels[:, :, None] == torch.arange(num_clusters, device=labels.device)).to(hidden.dtype)
        pooled = membership.transpose(1, 2) @ hidden / membership.sum(dim=1)[:, :, None].clamp(min=1)
        clusters_mask = clusters.center_mask[:, None, None, :]
        cluster_tokens = self.out(self.inter_encoder(pooled, clusters_mask))

        # Right-aligned: slot s of a view with n tokens holds its cluster s - (max_image_tokens - n), if any.
        projected = self.projector(cluster_tokens)
        slots = torch.arange(config.max_image_tokens, device=labels.device)
        cluster_of_slot = slots - (config.max_image_tokens - clusters.num_tokens[:, None])
        filled = cluster_of_slot >= 0
        index = cluster_of_slot.clamp(min=0)[:, :, None].expand(-1, -1, projected.shape[-1])
        image_features = projected.gather(1, index) * filled[:, :, None]
        return SeTokCompressorOutput(
            image_features=image_features,
            token_mask=filled.long(),
            num_tokens=clusters.num_tokens,
            cluster_tokens=cluster_tokens,
            cluster_labels=labels,
            scores=clusters.scores,
        )


class SeTokCache(Cache):
    """The layers of the cache a prefill with images filled (dynamic or static), and which image slots of the cached
    sequence SeTok left unfilled, (batch, cached length), True where unfilled.

    The prefill returns one, so that every later step masks those slots without being told again: `generate`'s
    decoding steps, and a continuation from the returned cache (or a `copy.deepcopy` of it). Beam search and batch
    selection reorder the slots with the keys and values.
    """

    def __init__(self, layers: list, unfilled_image_slots: torch.BoolTensor):
        super().__init__(layers=layers)
        self.unfilled_image_slots = unfilled_image_slots

    def slots_over(self, length: int) -> torch.BoolTensor:
        """The unfilled slots over a sequence of `length` tokens that starts with the cached one (later tokens are
        text, never unfilled)."""
        slots = self.unfilled_image_slots[:, :length]
        return F.pad(slots, (0, length - slots.shape[1]))

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self.unfilled_image_slots = self.unfilled_image_slots[beam_idx.to(self.unfilled_image_slots.device)]

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        self.unfilled_image_slots = self.unfilled_image_slots.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self.unfilled_image_slots = self.unfilled_image_slots[indices]


class SeTokModel(CompressedVLMModel):
    config_class = SeTokConfig
    compressor_class = SeTokCompressor

    def prepare_language_model_inputs(self, inputs: LanguageModelInputs) -> LanguageModelInputs:
        """Mask the unfilled image slots (this pass's, and those a `SeTokCache` holds from earlier prefills) in the
        2-D mask and count position ids over the kept tokens; given position ids count those slots, so with images
        they are replaced. (A 4-D mask comes from `generate`, built from a 2-D mask that is already masked.)"""
        attention_mask, cache = inputs.attention_mask, inputs.cache
        slots = inputs.unfilled_image_slots
        if attention_mask is not None and attention_mask.ndim != 2:
            if slots is not None:
                raise ValueError(
                    f"SeTok masks unfilled image slots in a 2-D attention mask; got a {attention_mask.ndim}-D one."
                )
            return inputs
        batch, length = inputs.inputs_embeds.shape[:2]
        past_length = int(cache.get_seq_length()) if cache is not None else 0
        if attention_mask is not None:
            past_length = attention_mask.shape[1] - length
        unfilled = cache.slots_over(past_length + length) if isinstance(cache, SeTokCache) else None
        position_ids = inputs.position_ids
        if slots is not None:
            earlier = slots.new_zeros(batch, past_length) if unfilled is None else unfilled[:, :past_length]
            unfilled = torch.cat([earlier, slots], dim=1)
            position_ids = None
        if unfilled is not None:
            if attention_mask is None:
                attention_mask = torch.ones(unfilled.shape, dtype=torch.long, device=inputs.inputs_embeds.device)
            attention_mask = attention_mask * ~unfilled.to(attention_mask.device)
        if position_ids is None and attention_mask is not None:
            position_ids = positions_from_mask(attention_mask)[:, -length:]
        return dataclasses.replace(
            inputs, attention_mask=attention_mask, position_ids=position_ids, unfilled_image_slots=unfilled
        )

    def finish_language_model(self, cache: Cache | None, inputs: LanguageModelInputs) -> Cache | None:
        """A prefill with images returns its cache as a `SeTokCache` that records the unfilled slots (earlier
        prefills' and its own) for the masks of every later step."""
        if cache is None or inputs.placeholder_mask is None:
            return cache
        return SeTokCache(cache.layers, inputs.unfilled_image_slots)


class SeTokForConditionalGeneration(CompressedVLMForConditionalGeneration, GenerationMixin):
    config_class = SeTokConfig
    model_class = SeTokModel

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None, **kwargs):
        """Mask the image slots an earlier prefill left unfilled (held by its `SeTokCache`) in the mask of every later
        step, and count positions over the kept tokens, before `generate` turns the mask 4-D for a static cache. The
        prefill itself takes the 2-D mask, into which it writes the slots it leaves unfilled."""
        cache = kwargs.get(CACHE_NAME)
        if isinstance(cache, SeTokCache):
            if attention_mask is None:  # `generate` drops an all-ones mask; its position ids still span the sequence
                position_ids = kwargs.get("position_ids")
                length = input_ids.shape[1] if position_ids is None else position_ids.shape[-1]
                attention_mask = torch.ones((input_ids.shape[0], length), dtype=torch.long, device=input_ids.device)
            unfilled = cache.slots_over(attention_mask.shape[1]).to(input_ids.device)
            attention_mask = attention_mask * ~unfilled
            kwargs["position_ids"] = positions_from_mask(attention_mask)
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        if model_inputs.get("pixel_values") is not None or (model_inputs.get("mm_encoder_outputs") or {}).get("image"):
            model_inputs["attention_mask"] = attention_mask
        return model_inputs
