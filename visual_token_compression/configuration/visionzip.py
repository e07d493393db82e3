"""Configuration of VisionZip (Yang et al., CVPR 2025): keep the patches CLS attends to, merge the rest into a few."""

from __future__ import annotations

from .base import CompressedVLMConfig


class VisionZipConfig(CompressedVLMConfig):
    """VisionZip: each view's CLS-inclusive tokens become `dominant_tokens + contextual_tokens` tokens, with no
    parameters besides LLaVA's `mlp2x_gelu` projector.

    The tokens, the CLS attention row and the keys all come from the layer that produced
    `hidden_states[vision_feature_layer]` (-2, the original's fixed choice, by default). The paper's settings are
    54 + 10 (64 tokens, the default), 108 + 20 (128) and 162 + 30 (192).

    Args:
        dominant_tokens: CLS plus the `dominant_tokens - 1` patches with the highest CLS attention, kept as they are.
            CLS counts as one of them, as in the original (`dominant=54` keeps 53 patches).
        contextual_tokens: each is a target token (spread uniformly over the tokens left after the dominant ones)
            plus the mean of the remaining tokens whose keys are most similar to it.
    """

    model_type = "visionzip"

    def __init__(self, dominant_tokens: int = 54, contextual_tokens: int = 10, **kwargs):
        # The compressor reads one layer; multi-level features are unused.
        kwargs.setdefault("multi_level_feature_layers", [])
        super().__init__(**kwargs)
        tower = self.vision_config.model_type
        if "siglip" in tower:
            raise ValueError(
                f"VisionZip ranks patches by the attention of the CLS token, and a {tower} tower has no CLS token; "
                "use a CLIP tower."
            )
        num_layers = self.vision_config.num_hidden_layers
        if self.vision_feature_layer % (num_layers + 1) == 0:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer} selects the embeddings, which no attention layer "
                "produced: VisionZip needs the CLS attention and keys of the layer it reads."
            )
        if dominant_tokens < 1:
            raise ValueError(f"dominant_tokens={dominant_tokens} must be at least 1 (the CLS token).")
        if contextual_tokens < 1:
            raise ValueError(
                f"contextual_tokens={contextual_tokens} must be at least 1: the merge spreads its targets every "
                "(remaining tokens // contextual_tokens) positions (the original divides by zero here)."
            )
        num_tokens = self.vision_grid_size**2 + 1
        if dominant_tokens + contextual_tokens > num_tokens:
            raise ValueError(
                f"dominant_tokens + contextual_tokens = {dominant_tokens + contextual_tokens} exceeds the "
                f"{num_tokens} tokens of one view (CLS + {num_tokens - 1} patches): every contextual token needs a "
                "target among the tokens that are not dominant."
            )
        self.dominant_tokens = dominant_tokens
        self.contextual_tokens = contextual_tokens

    @property
    def image_seq_length(self) -> int:
        """Placeholders one image (view) takes in the LLM sequence: dominant + contextual tokens."""
        return self.dominant_tokens + self.contextual_tokens
