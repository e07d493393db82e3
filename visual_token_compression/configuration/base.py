"""Shared configuration of every compressed VLM: a vision tower, a compressor and a decoder LLM."""

from __future__ import annotations

from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

# CLIP ViT-L/14-336, the tower of every released TokenPacker / QueCC / VoCo-LLaMA checkpoint.
DEFAULT_VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,  # default: the released checkpoints
    "intermediate_size": 4096,  # default: the released checkpoints
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
DEFAULT_TEXT_CONFIG = {"model_type": "llama"}


def _as_sub_config(value, default: dict) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    value = dict(default if value is None else value)
    model_type = value.pop("model_type", default["model_type"])
    return CONFIG_MAPPING[model_type](**value)


def positive_int(name: str, value) -> int:
    """A config field that counts something: an int of at least 1 (not a bool), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def default_multi_level_layers(num_hidden_layers: int) -> list[int]:
    """The original's [12, 16, 22, 23] for 24 layers, kept at the same relative depths for other towers."""
    n = num_hidden_layers
    layers = [n // 2, (2 * n) // 3, n - 2, n - 1]
    return sorted({max(1, layer) for layer in layers})


class CompressedVLMConfig(PretrainedConfig):
    """Configuration shared by every compressed VLM.

    Args:
        vision_config: any vision tower config whose `AutoModel` returns `hidden_states` (CLIP, SigLIP, DINOv2).
            Defaults to CLIP ViT-L/14-336.
        text_config: any decoder LM config (Llama, Qwen2, Mistral, ...). Defaults to a Llama-7B shape.
        image_token_id: id of `<image>` in the tokenizer (`tokenizer.convert_tokens_to_ids("<image>")`).
        vision_feature_layer: the single-level layer (index into `hidden_states`, -2 in every original).
        multi_level_feature_layers: layers concatenated on channels for compressors that read several levels;
            `None` gives the original's [12, 16, 22, 23] for a 24-layer tower (same relative depths otherwise).
    """

    model_type = "compressed_vlm"
    # As in LlavaConfig: each sub-config loads as its own class (CLIPVisionConfig, LlamaConfig, ...) by model_type.
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        image_token_id: int | None = None,
        vision_feature_layer: int = -2,
        multi_level_feature_layers: list[int] | None = None,
        **kwargs,
    ):
        self.vision_config = _as_sub_config(vision_config, DEFAULT_VISION_CONFIG)
        self.text_config = _as_sub_config(text_config, DEFAULT_TEXT_CONFIG)
        self.image_token_id = image_token_id
        self.vision_feature_layer = vision_feature_layer
        num_layers = self.vision_config.num_hidden_layers
        if multi_level_feature_layers is None:
            multi_level_feature_layers = default_multi_level_layers(num_layers)
        self.multi_level_feature_layers = list(multi_level_feature_layers)
        for layer in [vision_feature_layer, *self.multi_level_feature_layers]:
            if not -(num_layers + 1) <= layer <= num_layers:
                raise ValueError(
                    f"Vision feature layer {layer} does not exist: the vision tower has {num_layers} layers "
                    f"(hidden_states indices -{num_layers + 1}..{num_layers})."
                )
        # Like LlavaConfig: an LLM with tied embeddings (SmolLM2, Qwen2-0.5B) keeps them tied inside the VLM.
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)

    @property
    def vision_grid_size(self) -> int:
        """Patches per side of one vision-tower view (24 for CLIP-L/14-336)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    def visual_token_budget(self) -> dict[str, str]:
        """Tokens per image in the LLM and the compression ratio, in the model card's words (`hub.py`); a method
        whose count is not simply `image_seq_length` per image says so by overriding this."""
        tower, per_view = self.vision_grid_size**2, self.image_seq_length
        return {
            "tokens_per_image": str(per_view),
            "compression_ratio": f"{tower / per_view:g}x ({tower} -> {per_view})",
            "token_note": "",
        }
