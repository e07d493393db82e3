"""TokenPacker (Li et al., 2024, arXiv 2407.02392): point queries from a downsampled grid attend to their region."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin

from ..configuration.tokenpacker import TokenPackerConfig
from ..tiling import choose_grid, views_of_grid
from .base import (
    CompressedImageOutput,
    CompressedVLMForConditionalGeneration,
    CompressedVLMModel,
    CompressorOutput,
    LanguageModelInputs,
)
from .layers import GeluMLP, LocalCrossAttention, grid_windows
from .region_extractor import RegionExtractor
from .vision import VisionFeatures, select_vision_features


@dataclass
class RegionCompressorOutput(CompressorOutput):
    """The views' tokens and `region_features`: per image, a (regions, hidden) tensor, one vector per region mask,
    which fill the `<mask>` tokens of the text in order."""

    region_features: list[torch.Tensor] | None = None


class TokenPackerCompressor(nn.Module):
    """576 patch features -> (24/s)^2 tokens at the LLM width.

    Keys/values come from the multi-level features at full resolution; each query is the single-level grid
    resized by bilinear interpolation (not pooling: for s=3 it is the block's centre pixel, as in the original)
    and attends only to the s x s region it covers. There is no residual: attention output goes straight into
    the MLP, as in the original's Algorithm 2.
    """

    def __init__(self, config: TokenPackerConfig):
        super().__init__()
        vision_width = config.vision_config.hidden_size
        multi_level_width = vision_width * len(config.multi_level_feature_layers)
        width = config.compressor_hidden_size
        self.raw_grid = config.vision_grid_size
        self.scale_factor = config.scale_factor
        self.grid = config.compressed_grid_size

        self.query_proj = nn.Linear(vision_width, width, bias=False)
        self.key_mlp = GeluMLP(multi_level_width, width, width)
        self.value_mlp = GeluMLP(multi_level_width, width, width)
        self.query_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.key_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.value_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attn = LocalCrossAttention(config, width, config.compressor_num_heads)
        self.out_mlp = GeluMLP(width, config.text_config.hidden_size, config.text_config.hidden_size)
        # TokenPacker-HD with Osprey: region masks -> one LLM token each (inside the compressor, so that every tool
        # that treats the compressor as the trained part between the tower and the LLM treats it alike).
        if config.use_region_extractor:
            self.region_extractor = RegionExtractor(config)

    def point_queries(self, single_level: torch.Tensor) -> torch.Tensor:
        """Bilinear resize of the raw single-level grid to G x G, in fp32 as the original, then projected."""
        views, _, channels = single_level.shape
        grid = single_level.reshape(views, self.raw_grid, self.raw_grid, channels).permute(0, 3, 1, 2)
        resized = F.interpolate(grid.float(), size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        resized = resized.to(single_level.dtype).permute(0, 2, 3, 1).reshape(views, self.grid**2, channels)
        return self.query_norm(self.query_proj(resized))

    def forward(self, features: VisionFeatures) -> torch.Tensor:
        if features.multi_level is None:
            raise ValueError("TokenPacker needs multi-level vision features (config.multi_level_feature_layers).")
        views = features.single_level.shape[0]
        if features.single_level.shape[1] != self.raw_grid**2:
            raise ValueError(
                f"TokenPacker expects {self.raw_grid**2} patches per view ({self.raw_grid}x{self.raw_grid}), "
                f"got {features.single_level.shape[1]}."
            )
        keys = grid_windows(self.key_norm(self.key_mlp(features.multi_level)), self.grid, self.scale_factor)
        values = grid_windows(self.value_norm(self.value_mlp(features.multi_level)), self.grid, self.scale_factor)
        queries = self.point_queries(features.single_level).reshape(views * self.grid**2, 1, -1)
        packed = self.attn(queries, keys, values).reshape(views, self.grid**2, -1)
        return self.out_mlp(packed)


class TokenPackerModel(CompressedVLMModel):
    """`region_masks` (TokenPacker-HD with `use_region_extractor`): per image, its region masks on the tile canvas, as
    `TokenPackerProcessor(region_masks=...)` returns them; the i-th `<mask>` token of a sample is filled with the
    vector of the i-th region of its images, wherever it is in the text."""

    config_class = TokenPackerConfig
    compressor_class = TokenPackerCompressor
    compressor_input_names = ("region_masks",)
    per_image_input_names = ("region_masks",)

    def compress(self, vision_hidden_states: tuple[torch.Tensor, ...], region_masks=None):
        """The views' tokens, and with `region_masks` each region's vector (`RegionCompressorOutput`)."""
        image_features = super().compress(vision_hidden_states)
        if region_masks is None:
            return image_features
        extractor = getattr(self.compressor, "region_extractor", None)
        if extractor is None:
            raise ValueError(
                "region_masks were given but this model has no region extractor: build it with "
                "use_region_extractor=True (TokenPacker-HD with Osprey)."
            )
        levels = select_vision_features(
            vision_hidden_states,
            vision_feature_layer=self.config.vision_feature_layer,
            num_patches=self.config.vision_grid_size**2,
            multi_level_feature_layers=self.config.region_feature_layers,
        ).multi_level.split(self.config.vision_config.hidden_size, dim=-1)
        return RegionCompressorOutput(image_features=image_features, region_features=extractor(levels, region_masks))

    def write_images(self, inputs: LanguageModelInputs, image_outputs: CompressedImageOutput) -> LanguageModelInputs:
        """The views into their placeholders, then each region's vector into its `<mask>` token."""
        inputs = super().write_images(inputs, image_outputs)
        regions = getattr(image_outputs.compressor_output, "region_features", None)
        mask_positions = self.mask_positions(inputs)
        if mask_positions is None and regions is None:
            return inputs
        if regions is None:
            regions = [features.new_zeros(0, 0) for features in image_outputs.pooler_output]
        tokens_per_image = [len(features) for features in image_outputs.pooler_output]
        expected = _regions_per_sample(inputs.placeholder_mask.sum(-1).tolist(), tokens_per_image, regions)
        found = [0] * len(expected) if mask_positions is None else mask_positions.sum(-1).tolist()
        for sample, (tokens, masks) in enumerate(zip(found, expected, strict=True)):
            if tokens != masks:
                raise ValueError(
                    f"Sample {sample} holds {tokens} <mask> tokens but its images have {masks} region masks: give "
                    "one region mask per <mask> token (TokenPackerProcessor's region_masks=)."
                )
        if mask_positions is None:
            return inputs
        features = torch.cat(list(regions)).to(inputs.inputs_embeds)
        inputs_embeds = inputs.inputs_embeds.masked_scatter(mask_positions.unsqueeze(-1), features)
        return dataclasses.replace(inputs, inputs_embeds=inputs_embeds)

    def mask_positions(self, inputs: LanguageModelInputs) -> torch.BoolTensor | None:
        """Where the `<mask>` tokens are, or None when there are none (or the model has no region extractor)."""
        if not self.config.use_region_extractor or self.config.mask_token_id is None:
            return None
        positions = self.get_token_mask(self.config.mask_token_id, inputs.input_ids, inputs.inputs_embeds)
        return positions if positions.any() else None

    def check_placeholders_have_images(self, input_ids: torch.LongTensor | None, cache, kind="image"):
        """Also `<mask>` tokens in a prompt: they need an image and its region masks."""
        super().check_placeholders_have_images(input_ids, cache, kind=kind)
        if kind != "image" or input_ids is None or not self.config.use_region_extractor:
            return
        if torch.compiler.is_compiling():  # as the base: compiled steps decode
            return
        if cache is not None and cache.get_seq_length() != 0:
            return  # a decoding step: a generated <mask> is text
        num_masks = int((input_ids == self.config.mask_token_id).sum())
        if num_masks:
            raise ValueError(f"The text holds {num_masks} <mask> tokens but no image and region masks were given.")

    def views_per_image(self, num_views: int, image_sizes: torch.Tensor | None) -> list[int]:
        """TokenPacker-HD: each image's tiles (+ global view), from its size as the image processor chose them."""
        if self.config.patch_num is None:
            return super().views_per_image(num_views, image_sizes)
        if image_sizes is None:
            raise ValueError(
                "TokenPacker-HD needs image_sizes (each image's height and width, as TokenPackerProcessor returns "
                "them) to tell which views belong to which image."
            )
        tile_size = self.config.vision_config.image_size
        counts = []
        for height, width in image_sizes.tolist():
            counts.append(views_of_grid(*choose_grid(height, width, self.config.patch_num, tile_size)))
        if sum(counts) != num_views:
            raise ValueError(
                f"image_sizes give {sum(counts)} views ({counts} per image) but pixel_values holds {num_views}."
            )
        return counts


def _regions_per_sample(
    placeholders_per_sample: list[int], tokens_per_image: list[int], regions: list[torch.Tensor]
) -> list[int]:
    """Region masks of each sample: its images are the next ones whose placeholders add up to the sample's."""
    counts, image = [], 0
    for placeholders in placeholders_per_sample:
        taken = count = 0
        while taken < placeholders and image < len(tokens_per_image):
            taken, count, image = taken + tokens_per_image[image], count + len(regions[image]), image + 1
        if taken != placeholders:
            raise ValueError(
                f"The samples' image placeholders {placeholders_per_sample} do not split into whole images of "
                f"{tokens_per_image} tokens."
            )
        counts.append(count)
    return counts


class TokenPackerForConditionalGeneration(CompressedVLMForConditionalGeneration, GenerationMixin):
    config_class = TokenPackerConfig
    model_class = TokenPackerModel
