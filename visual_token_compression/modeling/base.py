"""Shared VLM spine: vision tower -> compressor -> placeholder scatter -> decoder LLM -> LM head.

Built by composition like transformers' Llava: the tower and the LLM come from `AutoModel.from_config`, so any
CLIP/SigLIP/DINOv2 tower and any decoder LLM work. A method only supplies its compressor (and, for some, a mask rule).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.generation import LogitsProcessorList, SuppressTokensLogitsProcessor
from transformers.generation.candidate_generator import (
    AssistedCandidateGenerator,
    AssistedCandidateGeneratorDifferentTokenizers,
    PromptLookupCandidateGenerator,
)
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
    ModelOutput,
)
from transformers.utils.generic import can_return_tuple

from ..compat import (
    CACHE_NAME,
    LM_HEAD_TP_PLAN,
    TIED_LM_HEAD,
    TRANSFORMERS_V5,
    accepts_past_key_values,
    flat_vision_tower_key_mapping,
    output_cache,
)
from ..configuration.base import CompressedVLMConfig
from ..save_hooks import run_after_save
from .vision import select_vision_features


@dataclass
class CompressorOutput(ModelOutput):
    """What a compressor returns when a (views, tokens, hidden) tensor is not enough to say it.

    `image_features`: (views, tokens, hidden), written into the image placeholders in order. `token_mask`: (views,
    tokens), 1 on the slots the compressor filled and 0 on those it left unfilled (a dynamic token count, as SeTok's),
    which the language model must not attend to; integers like an attention mask. `None` when every slot is filled.
    A subclass's tensors hold one row per view too; its lists hold one entry per image (`generate` expands both so).
    """

    image_features: torch.FloatTensor | None = None
    token_mask: torch.LongTensor | None = None


@dataclass
class CompressedImageOutput(BaseModelOutputWithPooling):
    """`get_image_features`' output: the vision tower's, with `pooler_output` the compressed features of each image,
    one (tokens, hidden) tensor per image (an image of several views holds its views' tokens in order), and
    `compressor_output`, the compressor's own output, views first."""

    compressor_output: CompressorOutput | None = None


@dataclass
class CompressedVideoOutput(CompressedImageOutput):
    """`get_video_features`' output: as `CompressedImageOutput`, with frames for views (`pooler_output` holds one
    (frames * tokens, hidden) tensor per video) and `video_num_frames` (videos,), each video's frame count."""

    video_num_frames: torch.LongTensor | None = None


@dataclass(frozen=True)
class LanguageModelInputs:
    """What `forward` calls the language model with: the input of `prepare_language_model_inputs`, which returns a
    changed copy (`dataclasses.replace`), and of `finish_language_model`. A method that must tell its
    `finish_language_model` more returns a subclass with its own fields (VoCo-LLaMA's `VoCoLanguageModelInputs`).

    `placeholder_mask` (batch, seq): where this pass wrote image features, `None` without images.
    `unfilled_image_slots` (batch, seq): placeholders the compressor left unfilled (its `token_mask`), `None` when it
    returns no mask.
    `video_placeholder_mask` (batch, seq) and `video_num_frames` (videos,): where this pass wrote video frames, and
    each video's frame count in text order; `None` without videos.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.LongTensor | None
    cache: Cache | None
    input_ids: torch.LongTensor | None = None
    placeholder_mask: torch.BoolTensor | None = None
    unfilled_image_slots: torch.BoolTensor | None = None
    video_placeholder_mask: torch.BoolTensor | None = None
    video_num_frames: torch.LongTensor | None = None


def positions_from_mask(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Position ids that count only the tokens whose mask is 1 (0, 1, 2, ... in each row); a masked token repeats the
    position before it (0 before the first kept one). Left padding, masked image slots and a compressed cache then
    leave every kept token at the position it has in its row alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def is_prefill_step(model_kwargs: dict) -> bool:
    """Whether `generate`'s next forward reads the prompt rather than one decoded token: its first iteration (also an
    assistant model's prefill, which `generate` runs as a later iteration), or any step that has no cache to read the
    prompt from. 4.57 passes no `is_first_iteration`: there an empty cache says it."""
    cache = model_kwargs.get(CACHE_NAME)
    return bool(
        model_kwargs.get("is_first_iteration")
        or not model_kwargs.get("use_cache", True)
        or cache is None
        or cache.get_seq_length() == 0
    )


def with_named_inputs(function, names: tuple[str, ...]):
    """`function` with `names` added to its signature as keyword-only parameters, which it receives in `**kwargs`.

    transformers' `generate` hands a model only the inputs its signatures name: `forward`'s, and
    `get_image_features`' for the images it encodes before the prefill. A method's compressor inputs (QueCC's
    questions) are therefore named there, by `__init_subclass__`, without copying the base signatures.
    """
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    new = [name for name in names if name not in signature.parameters]
    if not new:
        return function

    @functools.wraps(function)
    def named(*args, **kwargs):
        return function(*args, **kwargs)

    variadic = [parameter for parameter in parameters if parameter.kind is inspect.Parameter.VAR_KEYWORD]
    named.__signature__ = signature.replace(
        parameters=[parameter for parameter in parameters if parameter not in variadic]
        + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in new]
        + variadic
    )
    return named


@can_return_tuple
def get_video_features(
    self, pixel_values_videos: torch.Tensor, video_num_frames: torch.LongTensor | None = None, **kwargs
) -> CompressedVideoOutput:
    """`CompressedVLMModel.get_video_features`, given to the models that take videos (see `__init_subclass__`).

    Every frame through the tower and the compressor, as an image of one view; `pooler_output` holds each
    video's frames in order, (frames * tokens, hidden). `pixel_values_videos` (frames of all videos, channels,
    height, width), `video_num_frames` (videos,): as the processor returns them. `kwargs`: as
    `get_image_features`' (not named, for the same reason)."""
    if video_num_frames is None:
        raise ValueError("pixel_values_videos needs video_num_frames (frames per video), as the processor returns.")
    counts = [int(count) for count in video_num_frames]
    if min(counts, default=1) < 1 or sum(counts) != pixel_values_videos.shape[0]:
        raise ValueError(
            f"video_num_frames {counts} must be positive and sum to the {pixel_values_videos.shape[0]} frames of "
            "pixel_values_videos."
        )
    chunks = [
        self.get_image_features(frames, return_dict=True, **kwargs)
        for frames in pixel_values_videos.split(self.frames_per_chunk)
    ]
    frames = {name: _concatenated([getattr(chunk, name) for chunk in chunks]) for name in chunks[0].keys()}
    per_frame = frames["compressor_output"].image_features
    return CompressedVideoOutput(
        **{**frames, "pooler_output": [video.flatten(0, 1) for video in per_frame.split(counts)]},
        video_num_frames=torch.as_tensor(counts, device=pixel_values_videos.device),
    )


def get_video_features_of_the_model(
    self, pixel_values_videos: torch.Tensor, video_num_frames: torch.LongTensor | None = None, **kwargs
) -> CompressedVideoOutput:
    """`CompressedVLMForConditionalGeneration.get_video_features`: the base model's."""
    return self.model.get_video_features(pixel_values_videos, video_num_frames, **kwargs)


# Both outputs extend transformers' own, so their cache field has the installed release's name (`cache` from 5.24).
@dataclass
class CompressedVLMModelOutputWithPast(BaseModelOutputWithPast):
    """`image_hidden_states`: the compressed image features written into the sequence, (views, tokens, hidden).
    `image_outputs` / `video_outputs`: `get_image_features`' / `get_video_features`' output (the tower's states on
    request, per-image / per-video `pooler_output`), as transformers' multimodal outputs carry them."""

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: CompressedImageOutput | None = None
    video_outputs: CompressedVideoOutput | None = None


@dataclass
class CompressedVLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`image_hidden_states`, `image_outputs` and `video_outputs`: as `CompressedVLMModelOutputWithPast`'s."""

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: CompressedImageOutput | None = None
    video_outputs: CompressedVideoOutput | None = None


class CompressedVLMPreTrainedModel(PreTrainedModel):
    config_class = CompressedVLMConfig
    base_model_prefix = "model"
    # A method that takes videos (`config.video_token_id`, `pixel_values_videos`) adds "video" (VoCo-LLaMA).
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Decoding steps compile with `fullgraph=True` (static cache, `torch.compile`); `generate` runs the prefill, where
    # the images are encoded and compressed, uncompiled. A method whose cache changes type after the prefill
    # (VoCo-LLaMA) sets it to False.
    _can_compile_fullgraph = True

    def save_pretrained(self, save_directory, is_main_process: bool = True, *args, **kwargs):
        """As transformers', then the remote-code bundle and the `auto_map` of every auto class (see `remote_code`),
        so that the folder loads with `trust_remote_code=True` where this package is not installed, and where it is
        (TRL's `SFTTrainer(model=folder)` needs `auto_map` to pick the auto class of an architecture transformers
        does not export). With `push_to_hub=True` the upload happens inside transformers' method, before that:
        `push_to_hub()`, `vtc push` and `hub.push_to_hub` upload the complete folder."""
        saved = super().save_pretrained(save_directory, is_main_process, *args, **kwargs)
        if is_main_process and Path(save_directory, "config.json").is_file():
            run_after_save(self, save_directory)
        return saved

    @classmethod
    def is_custom_code(cls) -> bool:
        """Not custom code to transformers' weight initialisation, although the classes live outside its package.

        For custom code transformers marks a module initialised when its own parameters are all loaded, which holds
        vacuously for modules without parameters of their own; CLIP's attention and MLP blocks are such modules, and
        CLIP initialises their projections from them, so a tower with missing weights would get a generic init. Our
        `_init_weights` goes through transformers' `init` functions like its own models, so that guard is not needed.
        """
        return False

    if not TRANSFORMERS_V5:

        def _get_key_renaming_mapping(self, checkpoint_keys, key_mapping=None, *args, **kwargs):
            """4.57 only: also read checkpoints written by 5.x (flat CLIP/SigLIP tower keys), see `compat`."""
            key_mapping = {**flat_vision_tower_key_mapping(self), **(key_mapping or {})}
            return super()._get_key_renaming_mapping(checkpoint_keys, key_mapping or None, *args, **kwargs)


class CompressedVLMModel(CompressedVLMPreTrainedModel):
    """Vision tower + compressor + LLM without a head. Subclasses set `compressor_class`.

    `compressor_input_names` lists extra processor outputs (besides `pixel_values`) that `forward` hands to
    `get_image_features`, e.g. QueCC's query tokens; like `pixel_values` they are read at prefill only, and they are
    named in both signatures (see `with_named_inputs`). They hold one row per view, like `pixel_values`, except
    those in `per_image_input_names`: lists of one entry per image (TokenPacker-HD's region masks), which
    `generate`'s expansion for beams repeats per image.
    """

    compressor_class: type[nn.Module]
    compressor_input_names: tuple[str, ...] = ()
    per_image_input_names: tuple[str, ...] = ()
    # Video frames the tower encodes per pass (and VoCo-LLaMA's inference prefill runs side by side): bounds the
    # memory of a long clip, not its result.
    frames_per_chunk = 8

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.compressor_input_names:
            cls.get_image_features = with_named_inputs(cls.get_image_features, cls.compressor_input_names)
        # Only a model that takes videos has `get_video_features` (transformers' generation and tests look for it).
        if "video" in cls.input_modalities and not hasattr(cls, "get_video_features"):
            cls.get_video_features = get_video_features

    def __init__(self, config: CompressedVLMConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.compressor = self.compressor_class(config)
        self.language_model = AutoModel.from_config(config.text_config)
        # The compressor combines its submodules' outputs itself, so `device_map="auto"` must keep it on one device;
        # `post_init` adds the tower's and the LLM's own unsplittable blocks, as for any composite model.
        self._no_split_modules = [self.compressor_class.__name__]
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs
    ) -> CompressedImageOutput:
        """The vision tower's output with the compressed features of each image as `pooler_output`, as Llava's, at
        the LLM width. `image_sizes` (images, 2): each image's (height, width), for methods that cut an image into
        several views. `kwargs`: the compressor inputs, and `output_hidden_states` / `output_attentions` (default:
        the config's; the tower's hidden states are computed anyway, the compressor reads them).

        The two flags are deliberately not named in the signature: `generate`, which calls this before the prefill,
        takes every argument named here away from the language model, which would then return no attentions or
        hidden states."""
        output_hidden_states = kwargs.pop("output_hidden_states", None)
        output_attentions = kwargs.pop("output_attentions", None)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        compressor_inputs = {name: kwargs.pop(name) for name in self.compressor_input_names if name in kwargs}
        if kwargs:
            raise TypeError(f"get_image_features got unexpected arguments: {sorted(kwargs)}.")
        vision_outputs, compressed = self.encode_images(pixel_values, output_attentions, **compressor_inputs)
        views_per_image = self.views_per_image(compressed.image_features.shape[0], image_sizes)
        per_image = compressed.image_features.split(views_per_image)
        return CompressedImageOutput(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=[views.flatten(0, 1) for views in per_image],
            hidden_states=vision_outputs.hidden_states if output_hidden_states else None,
            attentions=vision_outputs.attentions,
            compressor_output=compressed,
        )

    def encode_images(
        self, pixel_values: torch.Tensor, output_attentions: bool = False, **compressor_inputs
    ) -> tuple[BaseModelOutputWithPooling, CompressorOutput]:
        """The vision tower's output (every hidden state) and the compressor's, views first."""
        vision_outputs = self.vision_tower(
            pixel_values.to(self.vision_tower.dtype),
            output_hidden_states=True,
            output_attentions=output_attentions,
            return_dict=True,
        )
        compressed = self.compress(vision_outputs.hidden_states, **compressor_inputs)
        if not isinstance(compressed, CompressorOutput):
            compressed = CompressorOutput(image_features=compressed)
        return vision_outputs, compressed

    def compress(
        self, vision_hidden_states: tuple[torch.Tensor, ...], **compressor_inputs
    ) -> torch.Tensor | CompressorOutput:
        """The tower's hidden states -> the compressed features of every view: a (views, tokens_per_view, hidden)
        tensor, or a `CompressorOutput` for a compressor that leaves slots unfilled."""
        features = select_vision_features(
            vision_hidden_states,
            vision_feature_layer=self.config.vision_feature_layer,
            num_patches=self.config.vision_grid_size**2,
            multi_level_feature_layers=self.config.multi_level_feature_layers,
        )
        return self.compressor(features, **compressor_inputs)

    def views_per_image(self, num_views: int, image_sizes: torch.Tensor | None) -> list[int]:
        """How many consecutive views of `pixel_values` each image has: one, unless a method tiles."""
        if image_sizes is not None and len(image_sizes) != num_views:
            raise ValueError(f"Got image_sizes for {len(image_sizes)} images but pixel_values for {num_views}.")
        return [1] * num_views

    def get_compressed_image_features(self, pixel_values: torch.Tensor, **compressor_inputs) -> torch.Tensor:
        """What `forward` writes into the placeholders, (views, tokens_per_view, hidden)."""
        return self.encode_images(pixel_values, **compressor_inputs)[1].image_features

    def blank_image_inputs(self) -> dict:
        """`get_compressed_image_features` arguments for one blank view (see `anchor_image_path`)."""
        size = self.config.vision_config.image_size
        channels = getattr(self.config.vision_config, "num_channels", 3)
        return {
            "pixel_values": torch.zeros(1, channels, size, size, dtype=self.vision_tower.dtype, device=self.device)
        }

    def anchor_image_path(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Text-only training batches still run the vision path (on one blank view, added with weight zero), as
        LLaVA does: under ZeRO-3/FSDP every rank must gather the same parameters or the step hangs, and DDP
        must see the compressor used."""
        features = self.get_compressed_image_features(**self.blank_image_inputs())
        return inputs_embeds + 0.0 * features.sum().to(inputs_embeds.dtype)

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Where the image placeholders are, (batch, seq) bool."""
        if self.config.image_token_id is None:
            raise ValueError("config.image_token_id is not set: set it to tokenizer.convert_tokens_to_ids('<image>').")
        return self.get_token_mask(self.config.image_token_id, input_ids, inputs_embeds)

    def get_token_mask(
        self, token_id: int, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor
    ) -> torch.BoolTensor:
        """Where `token_id` is, (batch, seq); read from the embeddings when only those are given."""
        if input_ids is not None:
            return input_ids == token_id
        embedding = self.get_input_embeddings()(torch.tensor(token_id, dtype=torch.long, device=inputs_embeds.device))
        return (inputs_embeds == embedding).all(-1)

    def get_video_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor
    ) -> torch.BoolTensor:
        """Where the video placeholders are, (batch, seq) bool."""
        if getattr(self.config, "video_token_id", None) is None:
            raise ValueError("config.video_token_id is not set: set it to tokenizer.convert_tokens_to_ids('<video>').")
        return self.get_token_mask(self.config.video_token_id, input_ids, inputs_embeds)

    def merge_image_features(
        self, inputs_embeds: torch.Tensor, placeholder_mask: torch.Tensor, image_features: torch.Tensor, kind="image"
    ) -> torch.Tensor:
        """Write the (tokens, hidden) features into the placeholders in order, refusing any count mismatch."""
        num_placeholders = int(placeholder_mask.sum())
        if num_placeholders != image_features.shape[0]:
            raise ValueError(
                f"{kind.capitalize()} features and {kind} tokens do not match: the text holds {num_placeholders} "
                f"{kind} placeholder tokens but the {kind}s give {image_features.shape[0]} features. Build inputs "
                "with the model's processor."
            )
        return inputs_embeds.masked_scatter(placeholder_mask.unsqueeze(-1), image_features.to(inputs_embeds))

    def write_images(self, inputs: LanguageModelInputs, image_outputs: CompressedImageOutput) -> LanguageModelInputs:
        """The images' features written into their placeholders, and the slots the compressor left unfilled."""
        placeholder_mask = self.get_placeholder_mask(inputs.input_ids, inputs.inputs_embeds)
        inputs_embeds = self.merge_image_features(
            inputs.inputs_embeds, placeholder_mask, torch.cat(list(image_outputs.pooler_output))
        )
        unfilled = None
        compressed = image_outputs.compressor_output
        if compressed is not None and compressed.token_mask is not None:
            unfilled = torch.zeros_like(placeholder_mask)
            unfilled[placeholder_mask] = compressed.token_mask.flatten().to(unfilled.device) == 0
        return dataclasses.replace(
            inputs, inputs_embeds=inputs_embeds, placeholder_mask=placeholder_mask, unfilled_image_slots=unfilled
        )

    def write_videos(self, inputs: LanguageModelInputs, video_outputs: CompressedVideoOutput) -> LanguageModelInputs:
        """The frames' features written into the video placeholders, in order."""
        placeholder_mask = self.get_video_placeholder_mask(inputs.input_ids, inputs.inputs_embeds)
        inputs_embeds = self.merge_image_features(
            inputs.inputs_embeds, placeholder_mask, torch.cat(list(video_outputs.pooler_output)), kind="video"
        )
        return dataclasses.replace(
            inputs,
            inputs_embeds=inputs_embeds,
            video_placeholder_mask=placeholder_mask,
            video_num_frames=video_outputs.video_num_frames,
        )

    def check_placeholders_have_images(self, input_ids: torch.LongTensor | None, cache: Cache | None, kind="image"):
        """Placeholders in a prefill need pixels; after it they are generated text (the images are in the cache).

        Skipped under torch.compile, where the cache length is data (a static cache) and the compiled steps decode.
        """
        token_id, pixels = self.config.image_token_id, "pixel_values"
        if kind == "video":
            token_id, pixels = getattr(self.config, "video_token_id", None), "pixel_values_videos"
        if input_ids is None or token_id is None or torch.compiler.is_compiling():
            return
        if cache is not None and cache.get_seq_length() != 0:
            return
        num_placeholders = int((input_ids == token_id).sum())
        if num_placeholders:
            raise ValueError(
                f"The text holds {num_placeholders} {kind} placeholder tokens but no {pixels} were given."
            )

    def prepare_language_model_inputs(self, inputs: LanguageModelInputs) -> LanguageModelInputs:
        """The hook for a method's attention rule: the mask, positions or cache the language model gets, as a changed
        copy of `inputs` (VoCo seals its images there, SeTok masks unfilled slots). The embeddings hold the images
        already."""
        return inputs

    def run_language_model(self, inputs: LanguageModelInputs, use_cache: bool | None, **kwargs) -> ModelOutput:
        """The hook that runs the language model over the prepared inputs: one call by default. A method may run it
        in several passes that give the same outputs (VoCo-LLaMA's inference prefill, unit by unit)."""
        return self.language_model(
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            inputs_embeds=inputs.inputs_embeds,
            use_cache=use_cache,
            **{**kwargs, CACHE_NAME: inputs.cache, "return_dict": True},
        )

    def finish_language_model(self, cache: Cache | None, inputs: LanguageModelInputs) -> Cache | None:
        """The hook after the language model: the cache `forward` returns (VoCo compresses it here)."""
        return cache

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_num_frames: torch.LongTensor | None = None,
        **kwargs,
    ) -> CompressedVLMModelOutputWithPast:
        """Embed, compress the images and video frames (or take `mm_encoder_outputs["image"]` / `["video"]`,
        `get_image_features`' / `get_video_features`' output) and write them into their placeholders, let the method
        edit the language model's inputs, run it, let the method edit the cache."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds.")
        image_outputs = (mm_encoder_outputs or {}).get("image")
        video_outputs = (mm_encoder_outputs or {}).get("video")
        for pixels, outputs, name in (
            (pixel_values, image_outputs, "pixel_values"),
            (pixel_values_videos, video_outputs, "pixel_values_videos"),
        ):
            if pixels is not None and outputs is not None:
                raise ValueError(f"You cannot specify both {name} and mm_encoder_outputs for the same modality.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        compressor_inputs = {name: kwargs.pop(name) for name in self.compressor_input_names if name in kwargs}
        if pixel_values is not None:
            image_outputs = self.get_image_features(
                pixel_values, image_sizes=image_sizes, return_dict=True, **compressor_inputs
            )
        if pixel_values_videos is not None:
            if "video" not in self.input_modalities:
                raise ValueError(f"{type(self).__name__} does not take videos (no 'video' in its input_modalities).")
            video_outputs = self.get_video_features(pixel_values_videos, video_num_frames, return_dict=True)

        inputs = LanguageModelInputs(inputs_embeds, attention_mask, position_ids, cache, input_ids=input_ids)
        if image_outputs is not None:
            inputs = self.write_images(inputs, image_outputs)
        else:
            self.check_placeholders_have_images(input_ids, cache)
            if self.training and torch.is_grad_enabled():
                inputs = dataclasses.replace(inputs, inputs_embeds=self.anchor_image_path(inputs.inputs_embeds))
        if video_outputs is not None:
            inputs = self.write_videos(inputs, video_outputs)
        elif "video" in self.input_modalities:
            self.check_placeholders_have_images(input_ids, cache, kind="video")
        inputs = self.prepare_language_model_inputs(inputs)

        outputs = self.run_language_model(inputs, use_cache, **kwargs)
        compressed = None if image_outputs is None else image_outputs.compressor_output
        return CompressedVLMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: self.finish_language_model(output_cache(outputs), inputs)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=None if compressed is None else compressed.image_features,
            image_outputs=image_outputs,
            video_outputs=video_outputs,
        )


class CompressedVLMForConditionalGeneration(CompressedVLMPreTrainedModel, GenerationMixin):
    """The VLM with its LM head, loss and generation. Subclasses set `model_class`."""

    model_class: type[CompressedVLMModel]
    _tied_weights_keys = TIED_LM_HEAD
    _tp_plan = LM_HEAD_TP_PLAN

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        model_class = getattr(cls, "model_class", None)
        if model_class is None:
            return
        # The method says these once, on its model.
        cls._can_compile_fullgraph = model_class._can_compile_fullgraph
        cls.input_modalities = model_class.input_modalities
        if "video" in cls.input_modalities and not hasattr(cls, "get_video_features"):
            cls.get_video_features = get_video_features_of_the_model
        names = model_class.compressor_input_names
        if names:
            cls.forward = with_named_inputs(cls.forward, names)
            cls.get_image_features = with_named_inputs(cls.get_image_features, names)

    def __init__(self, config: CompressedVLMConfig):
        super().__init__(config)
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module):
        self.lm_head = value

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_compressed_image_features(self, pixel_values: torch.Tensor, **compressor_inputs) -> torch.Tensor:
        return self.model.get_compressed_image_features(pixel_values, **compressor_inputs)

    @can_return_tuple
    @accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_num_frames: torch.LongTensor | None = None,
        **kwargs,
    ) -> CompressedVLMCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            image_sizes=image_sizes,
            mm_encoder_outputs=mm_encoder_outputs,
            pixel_values_videos=pixel_values_videos,
            video_num_frames=video_num_frames,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        # The standard shifted next-token loss, for every method (SeTok lays out its unfilled image slots so that it
        # is the right one): trainers that compute the loss from the hidden states themselves (TRL) get the same.
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        # The base model's fields besides loss and logits, by name. `__dataclass_fields__`, not `dataclasses.fields`:
        # torch.compile cannot trace the latter on a class.
        fields = CompressedVLMCausalLMOutputWithPast.__dataclass_fields__
        carried = {name: getattr(outputs, name, None) for name in fields}
        return CompressedVLMCausalLMOutputWithPast(**{**carried, "loss": loss, "logits": logits})

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None, **kwargs):
        """Pass image and video inputs until the cache holds the prompt: at the first step, and also at an
        assistant's prefill, which `generate` runs as a later iteration. Decoding steps read them from the KV cache.
        (The cache travels in `kwargs` under the installed release's name; 4.57 has no `is_first_iteration`.)"""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        keep = is_prefill_step(kwargs)
        visual = ("pixel_values", "image_sizes", "pixel_values_videos", "video_num_frames", "mm_encoder_outputs")
        for name in (*visual, *self.model_class.compressor_input_names):
            if keep:
                model_inputs[name] = kwargs.get(name)
            else:
                model_inputs.pop(name, None)
        return model_inputs

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """As transformers' (beams, `num_return_sequences`), but the image and video inputs hold one row per view or
        frame, not per sample (TokenPacker-HD gives each image several views, a video has frames): each sample's
        block of rows is repeated `expand_size` times in order, as its expanded rows read them. What `generate`
        encoded before the prefill (`mm_encoder_outputs`) gets its per-row compressor output expanded likewise;
        transformers expands its per-image / per-video `pooler_output`."""
        visual = {}
        if expand_size > 1:
            for modality in ("image", "video"):
                visual.update(self._expand_visual_inputs(modality, input_ids, model_kwargs, expand_size))
        rest = {key: value for key, value in model_kwargs.items() if key not in visual}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **rest
        )
        return input_ids, {**model_kwargs, **visual}

    def _expand_visual_inputs(self, modality: str, input_ids, model_kwargs: dict, expand_size: int) -> dict:
        """One modality's rows (pixels and compressor inputs, one per image view / video frame) and per-item input
        (`image_sizes`, one per image; `video_num_frames`, one per video), each sample's block repeated `expand_size`
        times; the compressor output of what `generate` encoded is expanded in place. A sample's number of rows is
        its number of placeholders over the placeholders per row (the same for every row)."""
        if modality == "image":
            token_id, item_name = self.config.image_token_id, "image_sizes"
            row_names = ("pixel_values", *self.model_class.compressor_input_names)
        else:
            token_id, item_name = getattr(self.config, "video_token_id", None), "video_num_frames"
            row_names = ("pixel_values_videos",)
        pixels = model_kwargs.get(row_names[0])
        encoded = (model_kwargs.get("mm_encoder_outputs") or {}).get(modality)
        compressed = getattr(encoded, "compressor_output", None)
        if pixels is None and compressed is None:
            return {}
        if input_ids is not None and input_ids.shape[-1] == 0:
            input_ids = None  # `generate` from `inputs_embeds` alone
        inputs_embeds = model_kwargs.get("inputs_embeds")
        if (input_ids is None and inputs_embeds is None) or token_id is None:
            return {}
        placeholders = self.model.get_token_mask(token_id, input_ids, inputs_embeds).sum(-1)
        num_rows = pixels.shape[0] if pixels is not None else compressed.image_features.shape[0]
        total = int(placeholders.sum())
        if num_rows == 0 or total == 0 or total % num_rows:
            return {}  # placeholders and rows do not match: the forward pass reports it
        per_row = total // num_rows
        if (placeholders % per_row).any():
            raise ValueError(
                f"Every {modality} row takes {per_row} placeholder tokens, but the samples hold {placeholders.tolist()}."
            )
        rows_per_sample = (placeholders // per_row).tolist()
        row_index = _repeat_blocks(rows_per_sample, expand_size, placeholders.device)

        def per_row_rows(value):
            if isinstance(value, torch.Tensor) and value.shape[0] == num_rows:
                return value[row_index.to(value.device)]
            return value

        if compressed is not None:
            encoded.compressor_output = type(compressed)(
                **{name: per_row_rows(value) for name, value in compressed.items()}
            )
        expanded = {
            name: per_row_rows(model_kwargs[name])
            for name in row_names
            if isinstance(model_kwargs.get(name), torch.Tensor) and model_kwargs[name].shape[0] == num_rows
        }
        items = model_kwargs.get(item_name)
        if modality == "video" and items is None:
            items = getattr(encoded, "video_num_frames", None)
        rows_per_item = None
        if isinstance(items, torch.Tensor):
            if modality == "image":
                rows_per_item = torch.tensor(self.model.views_per_image(num_rows, items))
            else:
                rows_per_item = items.cpu()
        elif modality == "image" and encoded is not None:  # images `generate` encoded: their tokens give their views
            rows_per_item = torch.tensor([len(tokens) // per_row for tokens in encoded.pooler_output])
        if rows_per_item is not None:
            first_rows = torch.cumsum(rows_per_item, 0) - rows_per_item
            sample_ends = torch.tensor(rows_per_sample).cumsum(0)
            items_per_sample = torch.bincount(
                torch.searchsorted(sample_ends, first_rows, right=True), minlength=len(rows_per_sample)
            )
            item_index = _repeat_blocks(items_per_sample.tolist(), expand_size, placeholders.device)
            if isinstance(items, torch.Tensor) and item_name in model_kwargs:
                expanded[item_name] = items[item_index.to(items.device)]
            if modality == "video" and encoded is not None:
                encoded.video_num_frames = items[item_index.to(items.device)]

            # What holds one entry per image: the model's `per_image_input_names` (TokenPacker-HD's region masks)
            # in, the compressor output's lists (its region vectors) out.
            def per_item(name, value):
                if len(value) != len(rows_per_item):  # repeating would silently drop or misplace entries
                    raise ValueError(f"`{name}` holds {len(value)} entries for {len(rows_per_item)} {modality}s.")
                return [value[index] for index in item_index.tolist()]

            per_item_inputs = self.model_class.per_image_input_names if modality == "image" else ()
            for name in per_item_inputs:
                if model_kwargs.get(name) is not None:
                    expanded[name] = per_item(name, model_kwargs[name])
            for name, value in encoded.compressor_output.items() if compressed is not None else ():
                if isinstance(value, list):
                    encoded.compressor_output[name] = per_item(name, value)
        return expanded

    def _get_candidate_generator(self, *args, **kwargs):
        """Keep image placeholders out of drafts (prompt lookup copies them from the prompt): the verifying forward
        would take them for image slots. Drafts are only proposals, so the generated text is unchanged."""
        candidate_generator = super()._get_candidate_generator(*args, **kwargs)
        same_vocabulary = isinstance(
            candidate_generator, (AssistedCandidateGenerator, PromptLookupCandidateGenerator)
        ) and not isinstance(candidate_generator, AssistedCandidateGeneratorDifferentTokenizers)
        if same_vocabulary and self.config.image_token_id is not None:
            no_placeholders = SuppressTokensLogitsProcessor([self.config.image_token_id], device=self.device)
            candidate_generator.logits_processor = LogitsProcessorList(
                [*(candidate_generator.logits_processor or []), no_placeholders]
            )
        return candidate_generator


def _concatenated(values: list):
    """Chunks' outputs joined on their first dimension: tensors, tuples of tensors (per layer), lists (per item),
    model outputs."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, ModelOutput):
        return type(first)(**{name: _concatenated([value[name] for value in values]) for name in first.keys()})
    if isinstance(first, list):
        return [item for value in values for item in value]
    if isinstance(first, tuple):
        return tuple(_concatenated(list(parts)) for parts in zip(*values, strict=True))
    return first


def _repeat_blocks(block_sizes: list[int], times: int, device) -> torch.LongTensor:
    """Indices that repeat each consecutive block of rows `times` times in place: [0, 1, 0, 1, 2, 2] for [2, 1], 2."""
    blocks = torch.arange(sum(block_sizes), device=device).split(block_sizes)
    return torch.cat([block.repeat(times) for block in blocks])
