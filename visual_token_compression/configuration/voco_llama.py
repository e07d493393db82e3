"""Configuration of VoCo-LLaMA (Ye et al., 2024): the LLM itself compresses an image into a few `<voco>` tokens."""

from __future__ import annotations

import copy

from .base import CompressedVLMConfig, positive_int


class VoCoLlamaConfig(CompressedVLMConfig):
    """VoCo-LLaMA: LLaVA-1.5 (plain 2-layer MLP projector, all 576 patches into the LLM) plus `num_voco_tokens`
    learned `<voco>` tokens after each image. Text after the VoCo tokens may not attend to anything before them,
    so at inference only the VoCo tokens' KV has to be kept: 576 -> `num_voco_tokens` cached tokens per image.

    Args:
        num_voco_tokens: VoCo tokens per image. 1 is the paper's headline setting; the released code hard-codes 2.
        voco_token_id: id of `<voco>` in the tokenizer and in the LLM's embeddings. `None` treats `<voco>` as new
            to the LLM, as the original training did (`add_special_tokens` + `resize_token_embeddings`): it takes the
            id `text_config.vocab_size` and the vocabulary grows by one row. Converted checkpoints set it explicitly; like
            `image_token_id` it may lie past `text_config.vocab_size` when the embeddings are resized afterwards.
        video_token_id: id of `<video>`, the placeholder of one video frame's patches (each frame is compressed like
            an image into its own `num_voco_tokens` VoCo tokens). `None`: the model takes no videos.
        video_positions: "compact" (default): frame t of a video starts (t - 1) * num_voco_tokens positions after the
            first, so the frames' VoCo tokens hold consecutive positions and their order is in them. "restart": every
            frame at the first frame's positions, which makes the model blind to frame order; the control of
            docs/voco_llama.md's video section, for ablations only.
        multi_level_feature_layers: unused by VoCo-LLaMA (single-level features only), so empty by default.
    """

    model_type = "voco_llama"

    def __init__(
        self,
        num_voco_tokens: int = 1,
        voco_token_id: int | None = None,
        video_token_id: int | None = None,
        video_positions: str = "compact",
        **kwargs,
    ):
        if kwargs.get("multi_level_feature_layers") is None:
            kwargs["multi_level_feature_layers"] = []
        super().__init__(**kwargs)
        positive_int("num_voco_tokens", num_voco_tokens)
        if voco_token_id is None:
            # A private copy, so that growing the vocabulary never changes a config object the caller still holds.
            self.text_config = copy.deepcopy(self.text_config)
            voco_token_id = self.text_config.vocab_size
            if voco_token_id == self.image_token_id:
                raise ValueError(
                    f"voco_token_id=None appends <voco> at id {voco_token_id}, right after the LLM's vocabulary, but "
                    "<image> was added there already: add <voco> to the tokenizer as well and pass its id."
                )
            self.text_config.vocab_size += 1
        if voco_token_id < 0:
            raise ValueError(f"voco_token_id must be a token id, got {voco_token_id}.")
        if voco_token_id == self.image_token_id:
            raise ValueError(
                f"<voco> and <image> share the id {voco_token_id}; they must be different tokens (the original "
                "LLaVA-1.5 convention puts <image> at 32000, where VoCo-LLaMA's <voco> lives)."
            )
        if video_token_id is not None and video_token_id in (self.image_token_id, voco_token_id):
            raise ValueError(
                f"video_token_id={video_token_id} is also <image>'s or <voco>'s id: <video> must be its own token."
            )
        if video_token_id is not None and video_token_id < 0:
            raise ValueError(f"video_token_id must be a token id, got {video_token_id}.")
        if video_positions not in ("compact", "restart"):
            raise ValueError(f"video_positions must be 'compact' or 'restart', got {video_positions!r}.")
        self.num_voco_tokens = num_voco_tokens
        self.voco_token_id = voco_token_id
        self.video_token_id = video_token_id
        self.video_positions = video_positions

    @property
    def image_seq_length(self) -> int:
        """Image placeholders per image: every patch of the tower (576 for CLIP-L/14-336), before the VoCo tokens."""
        return self.vision_grid_size**2

    def visual_token_budget(self) -> dict[str, str]:
        tower, per_view, kept = self.vision_grid_size**2, self.image_seq_length, self.num_voco_tokens
        return {
            "tokens_per_image": f"{per_view} image tokens enter the LLM; {kept} VoCo tokens are kept in the KV cache",
            "compression_ratio": f"{tower / kept:g}x ({tower} -> {kept} cached tokens)",
            "token_note": "Text after the VoCo tokens cannot attend to the image tokens, so only the VoCo tokens' "
            "keys and values are kept once the prompt is processed.",
        }
