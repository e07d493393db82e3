"""Small building blocks shared by the compressors."""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


class GeluMLP(nn.Sequential):
    """Linear -> GELU (exact erf form, as every original) -> Linear."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)


def grid_windows(tokens: torch.Tensor, grid: int, window: int) -> torch.Tensor:
    """(views, (grid * window)^2, E) -> (views * grid^2, window^2, E): the window x window block of a row-major token
    grid under each of grid x grid output cells, cells and the tokens inside each block row-major."""
    views, _, width = tokens.shape
    blocks = tokens.view(views, grid, window, grid, window, width).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(views * grid * grid, window * window, width)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class LocalCrossAttention(nn.Module):
    """Multi-head cross-attention of a few queries over their own local keys (one window per batch row).

    Same math as `nn.MultiheadAttention` (projections with bias, 1/sqrt(head_dim) scaling), but batch-first and
    dispatched through transformers' attention interface so it follows `attn_implementation` like the LLM.
    """

    is_causal = False

    def __init__(self, config, embed_dim: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query (windows, q_len, E), key/value (windows, kv_len, E) -> (windows, q_len, E)."""
        windows, q_len, _ = query.shape

        def heads(states: torch.Tensor) -> torch.Tensor:
            return states.view(windows, -1, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        implementation = self.config._attn_implementation or "eager"
        attention = eager_attention_forward
        if implementation != "eager":
            attention = ALL_ATTENTION_FUNCTIONS[implementation]
        output, _ = attention(self, q, k, v, None, scaling=self.scaling, dropout=0.0, is_causal=False)
        return self.out_proj(output.reshape(windows, q_len, -1))
