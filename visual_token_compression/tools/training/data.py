"""Training data: LLaVA-format JSON or any `datasets` dataset -> supervised batches for a compressed VLM.

Records hold an image (path, PIL image or `datasets` Image dict; absent for text-only samples) and a conversation
(`[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]`); for a model that takes videos, a
record may hold a video instead or as well (`video_data`). Encoding is lazy, in the collator, as LLaVA's
`lazy_preprocess`, so map-style and streaming datasets go through the same code.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from PIL import Image

from ...processing.images import load_image
from .templates import TEMPLATES
from .video_data import load_frames, video_placeholders

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100
INDEX_COLUMN = "__index__"


class SampleError(ValueError):
    """A training sample that cannot be used, with its index and image path."""


def load_training_dataset(
    data: str | datasets.Dataset | datasets.IterableDataset,
    image_column: str = "image",
    conversation_column: str = "conversations",
    streaming: bool = False,
    video_column: str = "video",
) -> datasets.Dataset | datasets.IterableDataset:
    """A LLaVA JSON file, a `load_dataset` name/folder, or a dataset object -> records with `image`/`video`/
    `conversations`.

    Each record also gets its position (`__index__`) so that errors can name the sample.
    """
    if isinstance(data, str):
        if data.endswith((".json", ".jsonl")):
            data = datasets.load_dataset("json", data_files=data, split="train", streaming=streaming)
        else:
            data = datasets.load_dataset(data, split="train", streaming=streaming)
    columns = data.column_names or []
    if conversation_column not in columns:
        raise ValueError(f"The dataset has no {conversation_column!r} column; its columns are {columns}.")
    renames = {
        old: new
        for old, new in ((image_column, "image"), (video_column, "video"), (conversation_column, "conversations"))
        if old in columns and old != new
    }
    if renames:
        data = data.rename_columns(renames)
    return data.map(lambda _, index: {INDEX_COLUMN: index}, with_indices=True)


@dataclass
class CompressedVLMDataCollator:
    """Encodes raw records into `input_ids`, `attention_mask`, `labels` and `pixel_values`.

    Labels supervise only the template's assistant segments (answers and their EOS). A sample whose image or video
    is missing, unreadable or without frames, or whose image tokens would be cut by `model_max_length`, raises
    `SampleError` naming its index and path (`on_error="raise"`, the default), or is logged and left out of the
    batch (`"skip"`). Batches are padded on `padding_side`, whatever the tokenizer's (left, for generation) is.
    A video keeps `num_frames` frames spread uniformly (None: every frame); its relative path is read under
    `image_folder` too.
    """

    processor: object
    template: str = "vicuna_v1"
    model_max_length: int | None = None
    image_folder: str | None = None
    on_error: str = "raise"
    padding_side: str = "right"
    num_frames: int | None = 8

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"Unknown template {self.template!r}; choose one of {sorted(TEMPLATES)}.")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {self.on_error!r}.")
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', not {self.padding_side!r}.")

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        encoded = []
        for record in records:
            try:
                encoded.append(self.encode(record))
            except SampleError as error:
                if self.on_error == "raise":
                    raise
                logger.warning("Skipping %s", error)
        if not encoded:
            raise SampleError("Every sample of this batch was unusable (see the warnings above).")
        return self.pad(encoded)

    def _describe(self, record: dict) -> str:
        image = record.get("image")
        where = image if isinstance(image, str) else "an in-memory image" if image is not None else "no image"
        if isinstance(image, list):
            where = f"{len(image)} images"
        video = record.get("video")
        if video is not None and video != "":
            where += f", video {video}" if isinstance(video, str) else ", an in-memory video"
        return f"sample {record.get(INDEX_COLUMN, '?')} ({where})"

    def _images(self, record: dict) -> list[Image.Image]:
        """The record's image, or its images when it holds a list of them (one placeholder each, in order)."""
        images = record.get("image")
        images = images if isinstance(images, list) else [] if images is None or images == "" else [images]
        return [self._image(record, image) for image in images]

    def _image(self, record: dict, image) -> Image.Image:
        if isinstance(image, dict):  # a `datasets` Image feature that was not decoded
            image = image.get("path") if image.get("bytes") is None else Image.open(io.BytesIO(image["bytes"]))
        if isinstance(image, str) and self.image_folder is not None and not Path(image).is_absolute():
            image = str(Path(self.image_folder) / image)
        try:
            return load_image(image)
        except (OSError, ValueError, TypeError) as error:
            raise SampleError(f"{self._describe(record)}: unreadable image: {error}") from error

    def _video(self, record: dict) -> list[Image.Image] | None:
        """The record's video as its sampled frames (`video_data.load_frames`), or None."""
        video = record.get("video")
        if video is None or video == "":
            return None
        if self.processor.video_token is None:
            raise SampleError(f"{self._describe(record)}: {type(self.processor).__name__} takes no videos.")
        if isinstance(video, str) and self.image_folder is not None and not Path(video).is_absolute():
            video = str(Path(self.image_folder) / video)
        try:
            return load_frames(video, self.num_frames, self.processor.max_num_frames)
        except (OSError, ValueError, TypeError) as error:
            raise SampleError(f"{self._describe(record)}: unusable video: {error}") from error

    def _regions(self, record: dict) -> list:
        """The record's `regions` (see `processing.regions.region_mask`), mask files read under `image_folder`."""
        regions = []
        for region in record["regions"]:
            path = region.get("mask") if isinstance(region, dict) else None
            if isinstance(path, str) and self.image_folder is not None and not Path(path).is_absolute():
                region = {**region, "mask": str(Path(self.image_folder) / path)}
            regions.append(region)
        return regions

    def encode(self, record: dict) -> dict[str, torch.Tensor]:
        """One sample through the method's own processor, plus labels from the template's supervised spans."""
        processor = self.processor
        images, video = self._images(record), self._video(record)
        videos = [video] if video is not None else []
        tokenizer = processor.tokenizer
        conversations, placeholder = record["conversations"], processor.image_token
        if videos and not images:  # the template puts the video's place first, as an image's
            conversations = video_placeholders(conversations, processor.image_token, processor.video_token)
            placeholder = processor.video_token
        segments = TEMPLATES[self.template](conversations, placeholder, tokenizer.eos_token, tokenizer.bos_token)
        texts = [text for text, _ in segments]
        for token, visuals, kind in (
            (processor.image_token, images, "image"),
            (processor.video_token, videos, "video"),
        ):
            placeholders = sum(text.count(token) for text in texts) if token is not None else 0
            if placeholders != len(visuals):
                raise SampleError(
                    f"{self._describe(record)}: the conversation holds {placeholders} {token!r} "
                    f"tokens but the sample has {len(visuals)} {kind}{'s' if len(visuals) > 1 else ''}."
                )
        # Character spans of the supervised segments in the text the processor tokenizes (placeholders expanded).
        expanded = processor.expand_image_tokens(texts, images, videos)
        supervised_spans, cursor = [], 0
        for text, (_, supervised) in zip(expanded, segments, strict=True):
            if supervised:
                supervised_spans.append((cursor, cursor + len(text)))
            cursor += len(text)

        max_length = self.model_max_length or tokenizer.model_max_length
        # Tokenizers without a limit report a huge sentinel (int(1e30)) as model_max_length.
        kwargs = {"truncation": True, "max_length": max_length} if max_length < 1e9 else {}
        if images or videos:  # a compressor that reads the question reads the prompt, never the answer
            prompt = "".join(text for text, supervised in segments if not supervised)
            kwargs.update(processor.prompt_conditioning_kwargs(prompt))
        if record.get("regions") is not None:  # TokenPacker-HD's regions: one per `<mask>` token, in order
            kwargs["region_masks"] = [self._regions(record)]
        try:
            features = processor(
                images=images or None,
                videos=videos or None,
                text="".join(texts),
                return_tensors="pt",
                return_offsets_mapping=True,
                **kwargs,
            )
        except ValueError as error:
            raise SampleError(f"{self._describe(record)}: {error}") from error
        ends = features.pop("offset_mapping")[0, :, 1].tolist()
        supervised = [any(start < end <= stop for start, stop in supervised_spans) for end in ends]
        features["labels"] = torch.where(torch.tensor([supervised]), features["input_ids"], IGNORE_INDEX)
        return dict(features)

    def pad(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Token tensors (`*input_ids`, `*attention_mask`, `labels`) are padded on `padding_side` and stacked;
        every other tensor (pixel values and other per-view inputs) is concatenated on its first dimension, and
        per-image lists (region masks) are joined."""
        tokenizer = self.processor.tokenizer
        left = self.padding_side == "left"
        batch = {}
        for key in dict.fromkeys(key for sample in samples for key in sample):
            tensors = [sample[key] for sample in samples if key in sample]
            if isinstance(tensors[0], list):
                batch[key] = [item for items in tensors for item in items]
                continue
            if key.endswith("input_ids") or key.endswith("attention_mask") or key == "labels":
                value = (
                    IGNORE_INDEX
                    if key == "labels"
                    else 0
                    if key.endswith("attention_mask")
                    else tokenizer.pad_token_id
                )
                length = max(tensor.shape[-1] for tensor in tensors)
                padded = []
                for tensor in tensors:
                    filler = torch.full((*tensor.shape[:-1], length - tensor.shape[-1]), value, dtype=tensor.dtype)
                    padded.append(torch.cat([filler, tensor] if left else [tensor, filler], dim=-1))
                tensors = padded
            batch[key] = torch.cat(tensors)
        return batch
