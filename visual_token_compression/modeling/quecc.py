"""QueCC (Li et al., 2024, arXiv 2411.03312): the user's question steers which visual details survive compression."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin

from ..configuration.quecc import QueCCConfig
from .base import CompressedVLMForConditionalGeneration, CompressedVLMModel, positions_from_mask
from .layers import GeluMLP, LocalCrossAttention, grid_windows
from .vision import VisionFeatures


class QueCCCompressor(nn.Module):
    """G x G patch features + one query vector per view -> h x h tokens at the LLM width.

    The projected query vector is added to every single-level token; that grid is downsampled by a depthwise
    strided convolution into h x h attention queries, and each query attends to the keys/values of its own
    G/h x G/h window of multi-level features. As in the original there is no residual, no mask and no position
    embedding inside; the attention output goes straight into the 2-layer GELU MLP to the LLM width.
    """

    def __init__(self, config: QueCCConfig):
        super().__init__()
        width = config.vision_config.hidden_size
        multi_level_width = width * len(config.multi_level_feature_layers)
        text_width = config.text_config.hidden_size
        eps = config.layer_norm_eps
        self.grid = config.vision_grid_size
        self.out_grid = config.compressed_grid_size
        self.window = config.attention_window

        self.text_proj = nn.Linear(text_width, width)
        self.text_norm = nn.LayerNorm(width, eps=eps)
        self.query_mlp = GeluMLP(width, width, width)
        self.query_norm = nn.LayerNorm(width, eps=eps)
        self.key_mlp = GeluMLP(multi_level_width, width, width)
        self.key_norm = nn.LayerNorm(width, eps=eps)
        self.value_mlp = GeluMLP(multi_level_width, width, width)
        self.value_norm = nn.LayerNorm(width, eps=eps)
        self.query_downsample = nn.Conv2d(
            width, width, kernel_size=config.kernel_size, stride=config.stride, groups=width
        )
        self.attn = LocalCrossAttention(config, width, config.compressor_num_heads)
        self.out_mlp = GeluMLP(width, text_width, text_width)

    def pack(self, single_level: torch.Tensor, multi_level: torch.Tensor, query_embeds: torch.Tensor) -> torch.Tensor:
        """The original `QueCC` module: (views, G*G, E), (views, G*G, M), (views, D) -> (views, h*h, E)."""
        views, num_patches, width = single_level.shape
        if num_patches != self.grid**2:
            raise ValueError(
                f"QueCC expects {self.grid**2} patches per view ({self.grid}x{self.grid}), got {num_patches}."
            )
        if query_embeds.shape[0] != views:
            raise ValueError(f"QueCC got {query_embeds.shape[0]} query vectors for {views} image views.")
        text = self.text_norm(self.text_proj(query_embeds.to(single_level.dtype))).unsqueeze(1)
        queries = self.query_norm(self.query_mlp(single_level + text))
        queries = queries.transpose(1, 2).reshape(views, width, self.grid, self.grid)
        queries = self.query_downsample(queries).flatten(2).transpose(1, 2)
        queries = queries.reshape(views * self.out_grid**2, 1, width)
        keys = grid_windows(self.key_norm(self.key_mlp(multi_level)), self.out_grid, self.window)
        values = grid_windows(self.value_norm(self.value_mlp(multi_level)), self.out_grid, self.window)
        return self.attn(queries, keys, values).reshape(views, self.out_grid**2, width)

    def forward(self, features: VisionFeatures, query_embeds: torch.Tensor) -> torch.Tensor:
        if features.multi_level is None:
            raise ValueError("QueCC needs multi-level vision features (config.multi_level_feature_layers).")
        return self.out_mlp(self.pack(features.single_level, features.multi_level, query_embeds))


class QueCCModel(CompressedVLMModel):
    """Adds the query path: each image's question goes through the same LLM to give its query vector.

    The processor returns one `query_input_ids` row per image (the question that follows it), so view i of
    `pixel_values` uses row i. The vector is the final (post-norm) hidden state of the row's last real token,
    computed without gradient as in the original; position ids follow the attention mask, so left and right
    padding give the same vector. A row with no token at all (an empty question with a tokenizer that adds no
    BOS) gets the zero vector, i.e. the constant `text_norm(text_proj.bias)` offset.
    """

    config_class = QueCCConfig
    compressor_class = QueCCCompressor
    compressor_input_names = ("query_input_ids", "query_attention_mask")

    @torch.no_grad()
    def get_query_embeds(
        self, query_input_ids: torch.LongTensor, query_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(images, query_len) question tokens -> (images, text_hidden) query vectors."""
        if query_attention_mask is None:
            query_attention_mask = torch.ones_like(query_input_ids)
        mask = query_attention_mask.to(torch.long)
        embeds = torch.zeros(
            query_input_ids.shape[0], self.config.text_config.hidden_size, dtype=self.dtype, device=self.device
        )
        has_tokens = mask.sum(-1) > 0
        if not has_tokens.any():
            return embeds
        ids, mask = query_input_ids[has_tokens], mask[has_tokens]
        position_ids = positions_from_mask(mask)
        hidden = self.language_model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False, return_dict=True
        ).last_hidden_state
        positions = torch.arange(mask.shape[-1], device=mask.device)
        last = (positions * mask).argmax(-1)
        embeds[has_tokens] = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].to(embeds.dtype)
        return embeds

    def blank_image_inputs(self) -> dict:
        """A blank view with an empty question (a query row without tokens gives the zero vector)."""
        query_input_ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        return {
            **super().blank_image_inputs(),
            "query_input_ids": query_input_ids,
            "query_attention_mask": torch.zeros_like(query_input_ids),
        }

    def compress(
        self,
        vision_hidden_states: tuple[torch.Tensor, ...],
        query_input_ids: torch.LongTensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As the base's, with each view compressed for its own question."""
        if query_input_ids is None:
            raise ValueError(
                "QueCC compresses each image for a question: pass query_input_ids (and query_attention_mask), "
                "one row per image, as QueCCProcessor returns them."
            )
        views = vision_hidden_states[0].shape[0]
        if query_input_ids.shape[0] != views:
            raise ValueError(
                f"QueCC needs one query row per image: got {query_input_ids.shape[0]} query_input_ids rows for "
                f"{views} images."
            )
        query_embeds = self.get_query_embeds(query_input_ids, query_attention_mask)
        return super().compress(vision_hidden_states, query_embeds=query_embeds)


class QueCCForConditionalGeneration(CompressedVLMForConditionalGeneration, GenerationMixin):
    config_class = QueCCConfig
    model_class = QueCCModel
