"""VoCo-LLaMA (Ye et al., 2024, arXiv 2406.12275): the LLM compresses each image into the KV of a few VoCo tokens.

The image (576 tokens from LLaVA-1.5's MLP projector) is followed by `num_voco_tokens` `<voco>` tokens, and an
attention rule seals it: a token after a VoCo run may not see anything before that run except earlier VoCo tokens.
Training uses the rule as a mask; inference drops the sealed columns from the cache after the prefill (`VoCoCache`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin, GenerationMode
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..compat import CACHE_NAME, output_cache
from ..configuration.base import positive_int
from ..configuration.voco_llama import VoCoLlamaConfig
from .base import (
    CompressedVLMForConditionalGeneration,
    CompressedVLMModel,
    LanguageModelInputs,
    is_prefill_step,
    positions_from_mask,
)
from .layers import GeluMLP
from .vision import VisionFeatures
from .voco_cache import VoCoCache
from .voco_prefill import prefill_row
from .voco_rule import VoCoLayout, voco_attention_mask, voco_layout

# Backends that add a (batch, 1, query, key) float mask to the scores; the VoCo rule is such a mask.
MASKED_ATTENTION_BACKENDS = ("eager", "sdpa")


class VoCoLlamaProjector(GeluMLP):
    """LLaVA-1.5's `mlp2x_gelu` projector: every patch feature to the LLM width, no token reduction."""

    def __init__(self, config: VoCoLlamaConfig):
        width = config.text_config.hidden_size
        super().__init__(config.vision_config.hidden_size, width, width)

    def forward(self, features: VisionFeatures) -> torch.Tensor:
        return super().forward(features.single_level)


@dataclass(frozen=True)
class VoCoLanguageModelInputs(LanguageModelInputs):
    """What VoCo's hooks pass on: `voco_mask` (batch, seq) where the VoCo tokens are; `key_padding_mask` (batch,
    cached columns + seq) the keys that are no padding; `layout` the prefill's blocks, frames and seals (`None` after
    the prefill); `cache_keep` (batch, seq) at the prefill, the new tokens later tokens may still attend to (the VoCo
    tokens and the text after the last unit), which `finish_language_model` keeps in the cache."""

    voco_mask: torch.BoolTensor | None = None
    key_padding_mask: torch.BoolTensor | None = None
    layout: VoCoLayout | None = None
    cache_keep: torch.BoolTensor | None = None


class VoCoLlamaModel(CompressedVLMModel):
    config_class = VoCoLlamaConfig
    compressor_class = VoCoLlamaProjector
    # Videos: every frame is compressed like an image into its own VoCo tokens (`config.video_token_id`).
    input_modalities = ("image", "video", "text")
    # The prefill turns the cache into a `VoCoCache` (fewer columns), which a static, compiled cache cannot become.
    _can_compile_fullgraph = False

    def check_voco_layout(self, layout: VoCoLayout, image_mask, video_mask, voco_mask, video_num_frames=None):
        """Every image and frame must be followed by its VoCo tokens (one unsealed would reach the text), and the
        videos of the text must be the ones `video_num_frames` counts, in order."""
        previous = functools.partial(F.pad, pad=(1, 0), value=False)
        blocks = (image_mask & ~previous(image_mask[:, :-1])) | (video_mask & ~previous(video_mask[:, :-1]))
        blocks, vocos = blocks.sum(-1), voco_mask.sum(-1)
        expected = blocks * self.config.num_voco_tokens
        for row in torch.nonzero(vocos != expected).flatten().tolist():
            raise ValueError(
                f"Sample {row} holds {int(blocks[row])} images or video frames and {int(vocos[row])} <voco> tokens, "
                f"but needs {self.config.num_voco_tokens} per image or frame ({int(expected[row])}); build inputs "
                "with VoCoLlamaProcessor, and never truncate through image, video or VoCo tokens."
            )
        in_text = [count for row in layout.frames_per_video for count in row]
        if video_num_frames is not None and in_text != [int(count) for count in video_num_frames]:
            raise ValueError(
                f"The text's videos have {in_text} frames, but video_num_frames says {video_num_frames.tolist()}; "
                "build inputs with VoCoLlamaProcessor."
            )

    def check_attention_backend(self):
        implementation = self.language_model.config._attn_implementation or "eager"
        if implementation not in MASKED_ATTENTION_BACKENDS:
            raise ValueError(
                f"VoCo-LLaMA needs an arbitrary attention mask (text after the VoCo tokens may not see the image), "
                f"which attn_implementation={implementation!r} cannot take: it would silently fall back to plain "
                f"causal attention. Use attn_implementation='sdpa' or 'eager' for the language model, e.g. "
                "{'text_config': 'sdpa', 'vision_config': 'flash_attention_2'}."
            )

    def layout(self, inputs: LanguageModelInputs) -> tuple[VoCoLayout, torch.Tensor]:
        """The prefill's layout (`voco_rule.voco_layout`), checked, and where its VoCo tokens are."""
        voco_mask = self.get_token_mask(self.config.voco_token_id, inputs.input_ids, inputs.inputs_embeds)
        image_mask, video_mask = inputs.placeholder_mask, inputs.video_placeholder_mask
        if image_mask is None:
            image_mask = (
                torch.zeros_like(voco_mask)  # a text-only model
                if self.config.image_token_id is None
                else self.get_placeholder_mask(inputs.input_ids, inputs.inputs_embeds)
            )
        if video_mask is None:
            video_mask = (
                torch.zeros_like(voco_mask)
                if self.config.video_token_id is None
                else self.get_video_placeholder_mask(inputs.input_ids, inputs.inputs_embeds)
            )
        restart = self.config.video_positions == "restart"
        layout = voco_layout(voco_mask, image_mask, video_mask, self.config.num_voco_tokens, restart_frames=restart)
        self.check_voco_layout(layout, image_mask, video_mask, voco_mask, inputs.video_num_frames)
        return layout, voco_mask

    def prepare_language_model_inputs(self, inputs: LanguageModelInputs) -> VoCoLanguageModelInputs:
        """The VoCo rule's ingredients (the layout at the prefill, the keys' padding), compact positions, and, at the
        prefill, which new tokens the cache keeps (`finish_language_model` drops the sealed ones) and each row's rope
        delta. `run_language_model` turns them into a 4-D mask, or runs the prefill unit by unit."""
        self.check_attention_backend()
        attention_mask, cache = inputs.attention_mask, inputs.cache
        if attention_mask is not None and attention_mask.ndim != 2:
            raise ValueError("VoCo-LLaMA builds its own 4D attention mask; pass the 2D padding mask (batch, seq).")
        if cache is not None and not isinstance(cache, DynamicCache):
            raise ValueError(
                f"VoCo-LLaMA needs a DynamicCache, got a {type(cache).__name__}: after the prefill it drops the sealed "
                "image columns from the cache, which leaves a VoCoCache (a DynamicCache with fewer columns per row)."
            )
        batch, query_length = inputs.inputs_embeds.shape[:2]
        device = inputs.inputs_embeds.device
        past_length = cache.get_seq_length() if cache is not None else 0
        if past_length == 0:
            layout, voco_mask = self.layout(inputs)
        else:
            layout = None
            voco_mask = self.get_token_mask(self.config.voco_token_id, inputs.input_ids, inputs.inputs_embeds)
            if voco_mask.any():
                raise ValueError(
                    "VoCo tokens must all be in the first forward pass of a sequence (the prefill): a cached prefix "
                    "cannot be sealed afterwards."
                )
        if isinstance(cache, VoCoCache):
            key_padding_mask = cache.key_padding_mask(attention_mask, batch, query_length)
        elif attention_mask is not None:
            key_padding_mask = attention_mask.bool()
        else:
            key_padding_mask = voco_mask.new_ones(batch, past_length + query_length)
        position_ids = inputs.position_ids
        if position_ids is None:
            position_ids = self.position_ids(attention_mask, past_length, batch, query_length, device)
            if layout is not None:
                position_ids = position_ids - layout.position_shift.to(device)
            elif isinstance(cache, VoCoCache):
                position_ids = position_ids + cache.rope_deltas.to(device)[:, None]
        keep = None
        if layout is not None:  # sealed columns are invisible to every later token: dropping them loses nothing
            keep = key_padding_mask[:, -query_length:].to(device) & (layout.seals == query_length)
        fields = {name: getattr(inputs, name) for name in LanguageModelInputs.__dataclass_fields__}
        return VoCoLanguageModelInputs(
            **{**fields, "position_ids": position_ids},
            voco_mask=voco_mask,
            key_padding_mask=key_padding_mask.to(device),
            layout=layout,
            cache_keep=keep,
        )

    def run_language_model(self, inputs: VoCoLanguageModelInputs, use_cache: bool | None, **kwargs):
        """At an inference prefill, unit by unit with plain causal passes (`voco_prefill`): the single pass's outputs
        and compressed cache without its (seq x seq) mask. Otherwise (training, a decoding step, or the language
        model's attentions or hidden states asked for) one pass under the VoCo rule as a 4-D mask."""
        config = self.language_model.config
        wants_layers = any(
            kwargs.get(flag) or (kwargs.get(flag) is None and getattr(config, flag, False))
            for flag in ("output_attentions", "output_hidden_states")
        )
        if inputs.layout is not None and not self.training and not wants_layers and inputs.voco_mask.any():
            outputs = self.prefill_unit_by_unit(inputs)
            if not (use_cache if use_cache is not None else self.language_model.config.use_cache):
                outputs[CACHE_NAME] = None
            return outputs
        cache = inputs.cache
        past = (
            cache.physical_length()
            if isinstance(cache, VoCoCache)
            else inputs.key_padding_mask.shape[1] - (inputs.inputs_embeds.shape[1])
        )
        mask, _ = voco_attention_mask(
            inputs.voco_mask, inputs.key_padding_mask, past, inputs.inputs_embeds.dtype, inputs.layout
        )
        return super().run_language_model(dataclasses.replace(inputs, attention_mask=mask), use_cache, **kwargs)

    def prefill_unit_by_unit(self, inputs: VoCoLanguageModelInputs):
        """The prefill row by row, unit by unit; its cache is already the compressed one (a `VoCoCache`)."""
        layout, embeds = inputs.layout, inputs.inputs_embeds
        batch, length = embeds.shape[:2]
        real = inputs.key_padding_mask[:, -length:]
        hidden = torch.zeros_like(embeds)
        rows = []
        for row in range(batch):
            index = real[row].nonzero().flatten()
            states, columns = prefill_row(
                self.language_model,
                embeds[row, index],
                inputs.position_ids[row, index],
                inputs.voco_mask[row, index],
                layout.unit_ends[row, index],
                layout.frames[row, index],
                self.frames_per_chunk,
            )
            hidden[row, index] = states.to(hidden.dtype)
            rows.append(columns)
        cache = VoCoCache.from_rows(
            [columns.layers for columns in rows], length, prefix_ids=inputs.input_ids, rope_deltas=layout.rope_deltas
        )
        return BaseModelOutputWithPast(last_hidden_state=hidden, **{CACHE_NAME: cache})

    def finish_language_model(self, cache: Cache | None, inputs: VoCoLanguageModelInputs) -> Cache | None:
        """After a single-pass prefill, the cache keeps only the columns later tokens may attend to (a `VoCoCache`),
        and the shift of the compact positions that later tokens continue from. A unit-by-unit prefill built it so."""
        if cache is None or inputs.cache_keep is None or isinstance(cache, VoCoCache):
            return cache
        return VoCoCache.compress(
            cache, inputs.cache_keep, prefix_ids=inputs.input_ids, rope_deltas=inputs.layout.rope_deltas
        )

    @staticmethod
    def position_ids(attention_mask, past_length: int, batch: int, query_length: int, device) -> torch.LongTensor:
        """Per-row positions counting real tokens only, so that left padding and cache compression leave them as
        they would be for the sample alone (the original used arange over the padded batch: same up to 5e-6).
        Frames of a video are then packed closer (`voco_rule`)."""
        if attention_mask is None:
            return torch.arange(past_length, past_length + query_length, device=device).expand(batch, -1)
        if attention_mask.shape[1] != past_length + query_length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} tokens, but the cache and the input hold "
                f"{past_length + query_length}."
            )
        return positions_from_mask(attention_mask)[:, past_length:].to(device)


class VoCoLlamaForConditionalGeneration(CompressedVLMForConditionalGeneration, GenerationMixin):
    config_class = VoCoLlamaConfig
    model_class = VoCoLlamaModel

    def compress_images(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
    ) -> VoCoCache:
        """Run an image prefix once (e.g. `processor(images=image, text="<image>")`) and return its compressed cache:
        `num_voco_tokens` KV columns per image. Pass a `copy.deepcopy` of it as `cache` to `generate`
        with any prompt that starts with the same prefix, to ask several questions about the image."""
        return self.compress_prefix(input_ids, attention_mask, pixel_values=pixel_values)

    def compress_videos(
        self,
        input_ids: torch.LongTensor,
        pixel_values_videos: torch.FloatTensor,
        video_num_frames: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        frames_per_chunk: int = 8,
        pixel_values: torch.FloatTensor | None = None,
    ) -> VoCoCache:
        """Run a video prefix once (e.g. `processor(videos=[frames], text="<video>")`, images allowed before the
        video) and return its compressed cache: `num_voco_tokens` KV columns per frame, the frames in time order.

        The tower encodes `frames_per_chunk` frames at a time and the language model compresses them side by side,
        each over the same context, so peak memory is bounded by one chunk whatever the length of the clip; the
        cache is the one the single pass would keep. Reuse it as `compress_images`' (a `copy.deepcopy` per prompt
        that starts with the same prefix)."""
        positive_int("frames_per_chunk", frames_per_chunk)
        previous, self.model.frames_per_chunk = self.model.frames_per_chunk, frames_per_chunk
        try:
            return self.compress_prefix(
                input_ids,
                attention_mask,
                pixel_values=pixel_values,
                pixel_values_videos=pixel_values_videos,
                video_num_frames=video_num_frames,
            )
        finally:
            self.model.frames_per_chunk = previous

    def compress_prefix(self, input_ids: torch.LongTensor, attention_mask=None, **visual_inputs) -> VoCoCache:
        """The compressed cache of prompts that end with a VoCo run (an inference prefill, unit by unit)."""
        voco_mask = input_ids == self.config.voco_token_id
        if not voco_mask[:, -1].all():
            raise ValueError(
                "compress_images and compress_videos expect prompts that end with their VoCo tokens (left padding), "
                "e.g. processor(images=image, text='<image>', padding_side='left'); text after them would stay "
                "uncompressed."
            )
        with torch.no_grad():
            outputs = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=True,
                return_dict=True,
                **{name: value for name, value in visual_inputs.items() if value is not None},
            )
        return output_cache(outputs)

    def _validate_generation_mode(self, generation_mode, generation_config, *args, **kwargs):
        """Refuse, before any forward, the decoding methods a compressed cache cannot serve."""
        super()._validate_generation_mode(generation_mode, generation_config, *args, **kwargs)
        if generation_mode == GenerationMode.ASSISTED_GENERATION:
            raise ValueError(
                "VoCo-LLaMA does not support assisted or prompt-lookup decoding: they crop rejected draft tokens from "
                "the cache, and its compressed cache (a VoCoCache, whose prompt has no per-token layout) cannot be "
                "cropped."
            )
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"VoCo-LLaMA does not support cache_implementation={generation_config.cache_implementation!r} (so "
                "neither torch.compile's static cache): after the prefill it drops the sealed image columns from the "
                "cache, which leaves a VoCoCache, a dynamic cache. Use the default dynamic cache."
            )

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None, **kwargs):
        """As the base, without `generate`'s position ids, and check that a reused compressed cache is the prefix of the
        prompt it is given with."""
        cache = kwargs.get(CACHE_NAME)
        if is_prefill_step(kwargs) and isinstance(cache, VoCoCache) and cache.prefix_ids is not None:
            prefix = cache.prefix_ids.to(input_ids.device)
            length = prefix.shape[1]
            if input_ids.shape[1] <= length or not torch.equal(input_ids[:, :length], prefix):
                raise ValueError(
                    f"This compressed cache replaces a {length}-token prefix, but the prompt given with it does not "
                    f"start with that prefix (prompt length {input_ids.shape[1]}); build the prompt with the same "
                    "image text, padding and batch as compress_images."
                )
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        # `generate` counts positions over every token; the model's own are compact over video frames and continue
        # from the cache's rope delta, so it computes them itself.
        model_inputs.pop("position_ids", None)
        return model_inputs
