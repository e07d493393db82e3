"""VoCo-LLaMA (Ye et al., 2024, arXiv 2406.12275): the LLM compresses each image into the KV of a few VoCo tokens.

The image (576 tokens from LLaVA-1.5's MLP projector) is followed by `num_voco_tokens` `<voco>` tokens, and an
attention rule seals it: a token after a VoCo run may not see anything before that run except earlier VoCo tokens.
Training uses the rule as a mask; inference drops the sealed columns from the cache after the prefill (`VoCoCache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin, GenerationMode

from ..compat import CACHE_NAME, output_cache
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
    """`cache_keep` (batch, seq): at the prefill, the new tokens later tokens may still attend to (the VoCo tokens
    and the text after them), which `finish_language_model` keeps in the cache; `None` after the prefill."""

    cache_keep: torch.BoolTensor | None = None


def sealing_positions(voco_mask: torch.Tensor) -> torch.Tensor:
    """For each token, the index of the last VoCo token of the next VoCo run at or after it (batch, seq).

    Any query after that index may no longer see the token. VoCo tokens and tokens after the last run are never
    sealed (index `seq`). With one image this is the original rule: text after the last VoCo token cannot see
    anything before the first one.
    """
    length = voco_mask.shape[1]
    positions = torch.arange(length, device=voco_mask.device).expand_as(voco_mask)
    next_is_voco = torch.nn.functional.pad(voco_mask[:, 1:], (0, 1), value=False)
    run_ends = torch.where(voco_mask & ~next_is_voco, positions, length)
    seals = run_ends.flip(-1).cummin(-1).values.flip(-1)
    return torch.where(voco_mask, length, seals)


def voco_attention_mask(
    voco_mask: torch.Tensor, key_padding_mask: torch.Tensor, past_length: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive (batch, 1, query, past + query) mask: causal, padding and the VoCo rule, 0 or finfo.min.

    A float mask rather than a bool one, because eager attention *adds* the mask (a bool mask leaks there).
    Returns the mask and `keep` (batch, query): the new tokens later tokens can still attend to.
    """
    batch, query_length = voco_mask.shape
    device = voco_mask.device
    key_length = past_length + query_length
    seals = torch.cat(
        [torch.full((batch, past_length), key_length, device=device), sealing_positions(voco_mask) + past_length], -1
    )
    queries = torch.arange(past_length, key_length, device=device)[None, :, None]
    keys = torch.arange(key_length, device=device)[None, None, :]
    allowed = (keys <= queries) & key_padding_mask[:, None, :] & (queries <= seals[:, None, :])
    # Padding queries keep their own key, so that no row is fully masked (NaN under SDPA); their outputs are unused.
    allowed |= keys == queries
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    keep = key_padding_mask[:, past_length:] & (seals[:, past_length:] == key_length)
    return mask[:, None], keep


class VoCoLlamaModel(CompressedVLMModel):
    config_class = VoCoLlamaConfig
    compressor_class = VoCoLlamaProjector
    # The prefill turns the cache into a `VoCoCache` (fewer columns), which a static, compiled cache cannot become.
    _can_compile_fullgraph = False

    def check_voco_layout(self, placeholder_mask: torch.Tensor, voco_mask: torch.Tensor):
        """Every image must be followed by its VoCo tokens; an image without them would reach the text unsealed."""
        starts = placeholder_mask & ~torch.nn.functional.pad(placeholder_mask[:, :-1], (1, 0), value=False)
        images, vocos = starts.sum(-1), voco_mask.sum(-1)
        expected = images * self.config.num_voco_tokens
        for row in torch.nonzero(vocos != expected).flatten().tolist():
            raise ValueError(
                f"Sample {row} holds {int(images[row])} images and {int(vocos[row])} <voco> tokens, but needs "
                f"{self.config.num_voco_tokens} per image ({int(expected[row])}); build inputs with "
                "VoCoLlamaProcessor, and never truncate through image or VoCo tokens."
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

    def prepare_language_model_inputs(self, inputs: LanguageModelInputs) -> VoCoLanguageModelInputs:
        """The VoCo rule as a 4-D mask over the new tokens and the cache, positions counting real tokens only, and,
        at the prefill, which new tokens the cache keeps (`finish_language_model` drops the sealed ones)."""
        self.check_attention_backend()
        attention_mask, cache = inputs.attention_mask, inputs.cache
        if attention_mask is not None and attention_mask.ndim != 2:
            raise ValueError("VoCo-LLaMA builds its own 4D attention mask; pass the 2D padding mask (batch, seq).")
        if cache is not None and not isinstance(cache, DynamicCache):
            raise ValueError(
                f"VoCo-LLaMA needs a DynamicCache, got a {type(cache).__name__}: after the prefill it drops the sealed "
                "image columns from the cache, which leaves a VoCoCache (a DynamicCache with fewer columns per row)."
            )
        voco_mask = self.get_token_mask(self.config.voco_token_id, inputs.input_ids, inputs.inputs_embeds)
        batch, query_length = voco_mask.shape
        past_length = cache.get_seq_length() if cache is not None else 0
        if past_length == 0:
            placeholder_mask = inputs.placeholder_mask
            if placeholder_mask is None:
                placeholder_mask = (
                    torch.zeros_like(voco_mask)  # a text-only model
                    if self.config.image_token_id is None
                    else self.get_placeholder_mask(inputs.input_ids, inputs.inputs_embeds)
                )
            self.check_voco_layout(placeholder_mask, voco_mask)
        elif voco_mask.any():
            raise ValueError(
                "VoCo tokens must all be in the first forward pass of a sequence (the prefill): a cached prefix "
                "cannot be sealed afterwards."
            )

        if isinstance(cache, VoCoCache):
            physical_past = cache.physical_length()
            key_padding_mask = cache.key_padding_mask(attention_mask, batch, query_length)
        else:
            physical_past = past_length
            key_padding_mask = (
                attention_mask.bool()
                if attention_mask is not None
                else voco_mask.new_ones(batch, past_length + query_length)
            )
        mask, keep = voco_attention_mask(
            voco_mask, key_padding_mask.to(voco_mask.device), physical_past, inputs.inputs_embeds.dtype
        )
        position_ids = inputs.position_ids
        if position_ids is None:
            position_ids = self.position_ids(attention_mask, past_length, batch, query_length, voco_mask.device)
        fields = {name: getattr(inputs, name) for name in LanguageModelInputs.__dataclass_fields__}
        return VoCoLanguageModelInputs(
            **{**fields, "attention_mask": mask, "position_ids": position_ids},
            # Sealed columns are invisible to every later token: dropping them after the prefill loses nothing.
            cache_keep=keep if past_length == 0 else None,
        )

    def finish_language_model(self, cache: Cache | None, inputs: VoCoLanguageModelInputs) -> Cache | None:
        """After the prefill, the cache keeps only the columns later tokens may attend to (a `VoCoCache`)."""
        if cache is None or inputs.cache_keep is None:
            return cache
        return VoCoCache.compress(cache, inputs.cache_keep, prefix_ids=inputs.input_ids)

    @staticmethod
    def position_ids(attention_mask, past_length: int, batch: int, query_length: int, device) -> torch.LongTensor:
        """Per-row positions counting real tokens only, so that left padding and cache compression leave them as
        they would be for the sample alone (the original used arange over the padded batch: same up to 5e-6)."""
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
        voco_mask = input_ids == self.config.voco_token_id
        if not voco_mask[:, -1].all():
            raise ValueError(
                "compress_images expects prompts that end with their VoCo tokens (left padding), e.g. "
                "processor(images=image, text='<image>', padding_side='left'); text after them would stay uncompressed."
            )
        with torch.no_grad():
            outputs = self.model(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                use_cache=True,
                return_dict=True,
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
        """As the base, and check that a reused compressed cache is the prefix of the prompt it is given with."""
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
        return super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
