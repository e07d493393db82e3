"""Configuration of SeTok (Wu et al., ICLR 2025): density-peak clustering of patches into a dynamic token set."""

from __future__ import annotations

from .base import CompressedVLMConfig

# SigLIP so400m-patch14-384, SeTok's tower: 27 x 27 = 729 patches of width 1152, no CLS token.
SIGLIP_SO400M_CONFIG = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
}


class SeTokConfig(CompressedVLMConfig):
    """SeTok: each view's patches are clustered (DPC-KNN) and every cluster becomes one token.

    The cluster count L depends on the image. The processor writes `max_image_tokens` placeholders per image; the
    model fills the last L and masks the unfilled ones before them out of attention and position ids. Defaults are
    the original's training defaults (SigLIP-so400m/14-384, last layer, k = 64, threshold 0.55, 2 heads, 2 + 2
    attention layers).

    Args:
        threshold: a patch whose score (density x distance to a denser patch) exceeds it becomes a cluster center.
            Absolute, so it depends on the scale of the tower's features.
        k: neighbours in the k-NN density (the original's `min_cluster_num` when no k is given). Acts as a minimum
            cluster size: a group of fewer than about k similar patches does not get its own token.
        fallback_num_tokens: when no score passes the threshold, the top this-many scores become centers (the
            original's `min_cluster_num`, 64). Not a lower bound otherwise: L can be 1.
        max_image_tokens: placeholders per image. `None` gives the number of patches, the largest L possible, so
            nothing is ever dropped (the original has no bound). A smaller value keeps the highest-scoring centers.
        compressor_num_heads: heads of both cluster encoders (`nheads`).
        intra_cluster_layers: attention layers of the encoder run inside each cluster (the original's
            `inner_cluster_layers`).
        inter_cluster_layers: attention layers of the encoder run across clusters (the original's
            `intra_cluster_layers`: its names are swapped).
        compressor_intermediate_size: MLP width of both encoders; `None` uses the LLM width (the original's 4096).
        token_feat_dim: width of the SeTok tokens before the projector; `None` uses the LLM width (the original's 4096).
        compressor_dropout: dropout after the attention projection and in the MLP (`proj_drop`, 0.2).
        compressor_attention_dropout: dropout on the attention weights (`attn_drop`, 0.0).
        layer_norm_eps: epsilon of the encoders' LayerNorms.
    """

    model_type = "setok"

    def __init__(
        self,
        threshold: float = 0.55,
        k: int = 64,
        fallback_num_tokens: int = 64,
        max_image_tokens: int | None = None,
        compressor_num_heads: int = 2,
        intra_cluster_layers: int = 2,
        inter_cluster_layers: int = 2,
        compressor_intermediate_size: int | None = None,
        token_feat_dim: int | None = None,
        compressor_dropout: float = 0.2,
        compressor_attention_dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        **kwargs,
    ):
        if kwargs.get("vision_config") is None:
            kwargs["vision_config"] = SIGLIP_SO400M_CONFIG
        kwargs.setdefault("vision_feature_layer", -1)  # the original reads SigLIP's last layer
        super().__init__(**kwargs)
        num_patches = self.vision_grid_size**2
        if not threshold > 0:
            raise ValueError(f"threshold={threshold} must be > 0: every score is >= 0, so every patch would pass.")
        for name, value in (("k", k), ("fallback_num_tokens", fallback_num_tokens)):
            if not 1 <= value <= num_patches:
                raise ValueError(f"{name}={value} must be between 1 and the {num_patches} patches of one view.")
        max_image_tokens = num_patches if max_image_tokens is None else max_image_tokens
        if not 1 <= max_image_tokens <= num_patches:
            raise ValueError(f"max_image_tokens={max_image_tokens} must be between 1 and the {num_patches} patches.")
        width = self.vision_config.hidden_size
        if compressor_num_heads < 1 or width % compressor_num_heads != 0:
            raise ValueError(
                f"compressor_num_heads={compressor_num_heads} must divide the vision width {width} (SeTok's encoders "
                "run at the tower's width, without an input projection)."
            )
        self.threshold = float(threshold)
        self.k = k
        self.fallback_num_tokens = fallback_num_tokens
        self.max_image_tokens = max_image_tokens
        self.compressor_num_heads = compressor_num_heads
        self.intra_cluster_layers = intra_cluster_layers
        self.inter_cluster_layers = inter_cluster_layers
        self.compressor_intermediate_size = compressor_intermediate_size or self.text_config.hidden_size
        self.token_feat_dim = token_feat_dim or self.text_config.hidden_size
        self.compressor_dropout = compressor_dropout
        self.compressor_attention_dropout = compressor_attention_dropout
        self.layer_norm_eps = layer_norm_eps

    @property
    def image_seq_length(self) -> int:
        """Placeholders one image takes in the LLM sequence: the upper bound `max_image_tokens`."""
        return self.max_image_tokens

    def visual_token_budget(self) -> dict[str, str]:
        tower, per_view = self.vision_grid_size**2, self.image_seq_length
        return {
            "tokens_per_image": f"dynamic, at most {per_view}",
            "compression_ratio": f"at least {tower / per_view:g}x ({tower} -> <= {per_view})",
            "token_note": "The number of tokens depends on the image (one per semantic cluster); "
            f"the processor writes {per_view} placeholders and the unused ones are masked out.",
        }
