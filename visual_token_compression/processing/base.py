"""Shared processor: images (and videos, where a method takes them) -> pixel values, text -> input_ids with each
`<image>` (`<video>`) expanded to its placeholders."""

import re

from transformers import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import MultiModalData, ProcessingKwargs
from transformers.tokenization_utils_base import TextInput
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..compat import TRANSFORMERS_V5, write_portable_tokenizer_class
from ..save_hooks import run_after_save
from .chat_templates import VICUNA_V1
from .images import load_image
from .videos import flatten_videos, load_videos

# No `from __future__ import annotations` here: transformers reads the kwargs TypedDicts' annotations as classes.


class CompressedVLMProcessorKwargs(ProcessingKwargs, total=False):
    _defaults = {}  # 4.57 reads it from every kwargs class; TypedDicts do not inherit class attributes


def tower_normalization(model_type: str) -> tuple[list[float], list[float]]:
    """The pixel mean and std a tower family was trained with: SigLIP's 0.5, DINOv2's ImageNet ones, else CLIP's."""
    if "siglip" in model_type:
        return [0.5] * 3, [0.5] * 3
    if model_type.startswith("dinov2"):
        return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    return list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)


def build_image_processor(vision_config):
    """LLaVA-1.5's 'pad' preprocessing for the tower: pad to a square with the mean colour, resize, normalise."""
    import transformers

    # 5.x without torchvision has only the PIL backend under its own name; 4.57's class is PIL-based already.
    image_processor_class = getattr(transformers, "LlavaImageProcessorPil", None) or transformers.LlavaImageProcessor
    size = vision_config.image_size
    mean, std = tower_normalization(vision_config.model_type)
    return image_processor_class(
        do_pad=True,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=mean,
        image_std=std,
    )


class CompressedVLMProcessor(ProcessorMixin):
    """Image processor + tokenizer that writes exactly as many `<image>` placeholders as the model fills.

    Args:
        image_processor: any image processor returning `pixel_values` of the tower's size.
        tokenizer: the LLM's tokenizer, holding `image_token` as a special token.
        chat_template: defaults to Vicuna v1, the originals' format.
        image_token: the placeholder string.
        image_seq_length: placeholders per image (the compressed token count); methods with a variable count
            override `image_token_counts`.

    Call kwargs follow transformers' processors: flat, or per modality in `text_kwargs` / `images_kwargs` /
    `videos_kwargs`, over the tokenizer's own init defaults. A text that starts with the BOS token (as the chat
    template renders it) is tokenized without the tokenizer adding a second one.

    Videos are taken only by a processor that sets `video_token` (and whose tokenizer holds it), as VoCo-LLaMA's
    does: each `<video>` of the text takes the next of `videos=`, whose sampled frames go through the image processor
    like images (`pixel_values_videos`, `video_num_frames`) and whose text is `video_text`. Every other processor
    refuses `videos=`, as every processor refuses `audio=`, and so do their chat templates: a model must never answer
    about a video or a sound that was silently dropped from its prompt.
    """

    if not TRANSFORMERS_V5:
        # 4.57 finds the sub-processors by these names. 5.x reads them from `__init__`'s arguments and loads each
        # through its Auto class (the saved `image_processor_type`, registered or in the folder's `auto_map`), and
        # warns that naming them here is deprecated.
        attributes = ["image_processor", "tokenizer"]
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"
    # The text layout a method's checkpoints were trained with; a processor whose layout differs overrides it.
    default_chat_template = VICUNA_V1
    valid_processor_kwargs = CompressedVLMProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        image_seq_length: int | None = None,
        **kwargs,
    ):
        self.image_token = image_token
        self.image_seq_length = image_seq_length
        # The placeholder of a video and the most frames one keeps: a processor that takes videos sets them from its
        # own init arguments (so that they are saved) before this runs; None here takes no videos.
        self.video_token = getattr(self, "video_token", None)
        self.max_num_frames = getattr(self, "max_num_frames", None)
        super().__init__(
            image_processor, tokenizer, chat_template=chat_template or self.default_chat_template, **kwargs
        )
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {image_token!r} token; add it with add_tokens(special_tokens=True)."
            )
        # A tokenizer without the video token (a folder saved before its model took videos) still loads; videos are
        # then refused, naming the missing token.
        self.video_token_id = None
        if self.video_token is not None and self.video_token in tokenizer.get_vocab():
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            if self.video_token_id == self.image_token_id:
                raise ValueError(f"{image_token!r} and {self.video_token!r} share the id {self.image_token_id}.")

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """As transformers', with the tokenizer class written under a name 4.57 reads too (see `compat`), then the
        after-save hooks (the remote-code bundle and `auto_map`s, see `save_hooks`). With `push_to_hub=True` the
        upload happens inside transformers' method, before both; `vtc push` and `save_for_hub` upload after them.

        A fast tokenizer's backend keeps the truncation and padding of its last call, and transformers reloads them
        as the tokenizer's defaults (which this processor applies): they are cleared first, so that one truncated
        call (a training collator's) does not become every later call's `max_length`."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
        saved = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        write_portable_tokenizer_class(save_directory)
        run_after_save(self, save_directory)
        return saved

    @classmethod
    def from_config(cls, config, tokenizer, image_processor=None, **kwargs):
        """The processor matching a model config (placeholder count, tower resolution).

        The tokenizer is set to pad on the left, saved with it: batched generation (pipelines, evaluation
        harnesses) then equals one by one. Training collators choose their own side.
        """
        tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = "left"
        return cls(
            image_processor=image_processor or build_image_processor(config.vision_config),
            tokenizer=tokenizer,
            image_seq_length=config.image_seq_length,
            **kwargs,
        )

    def image_token_counts(self, image_sizes: list[tuple[int, int]]) -> list[int]:
        """Placeholders for each image, given (height, width): the single source of the count."""
        if self.image_seq_length is None:
            raise ValueError("image_seq_length is not set on this processor.")
        return [self.image_seq_length] * len(image_sizes)

    def num_views(self, image_size: tuple[int, int]) -> int:
        """Views of `pixel_values` an image of this (height, width) becomes: one, unless a method tiles."""
        return 1

    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, **kwargs) -> MultiModalData:
        """For serving stacks (vLLM and others): the tokens of each image's whole span in the text (its placeholders
        and any layout text between them, as `mm_token_type_ids` marks them) and its views; for a processor that
        takes videos, the tokens of each video's whole span, given as (num_frames, height, width) of its kept frames
        (transformers' `video_sizes`)."""
        counts = {}
        if image_sizes is not None:
            sizes = [tuple(size) for size in image_sizes]
            counts["num_image_tokens"] = self._span_lengths([self.image_text(size) for size in sizes])
            counts["num_image_patches"] = [self.num_views(size) for size in sizes]
        if video_sizes is not None:
            self._refuse_unseen_inputs(videos=True)
            spans = [self.video_text([(height, width)] * num_frames) for num_frames, height, width in video_sizes]
            counts["num_video_tokens"] = self._span_lengths(spans)
        return MultiModalData(**counts)

    def _span_lengths(self, spans: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(spans, add_special_tokens=False)["input_ids"]] if spans else []

    def preprocess_images(self, images, **images_kwargs) -> dict:
        """Pixel tensors for the tower; methods that tile override this."""
        return dict(self.image_processor(images, **images_kwargs))

    def preprocess_videos(self, videos: list[list], **videos_kwargs) -> dict:
        """`pixel_values_videos`: every kept frame of every video in order, each processed exactly like an image (so
        a 1-frame video gives an image's pixels), with the videos' pixel kwargs."""
        frames = [frame for video in videos for frame in video]
        return {"pixel_values_videos": self.preprocess_images(frames, **videos_kwargs)["pixel_values"]}

    def prompt_conditioning_kwargs(self, prompt: str) -> dict:
        """Call kwargs that condition the compressor on `prompt` alone, for a caller whose text also holds the answer
        (the training collator): a compressor that reads the question must never read the answer. None by default."""
        return {}

    def extra_text_inputs(self, texts: list[str], num_images: int, text_kwargs: dict) -> dict:
        """Inputs a method derives from the text besides its tokens (QueCC's questions), popping its own kwargs
        from `text_kwargs`."""
        return {}

    def __call__(
        self, images: ImageInput | None = None, text: TextInput | list[TextInput] | None = None, **kwargs
    ) -> BatchFeature:
        """`videos=` and `audio=` are keywords here, not parameters: transformers' tools read a processor's
        signature as the modalities it takes, and only processors with a `video_token` name `videos`."""
        kwargs.update(kwargs.pop("processor_kwargs", None) or {})
        videos = flatten_videos(kwargs.pop("videos", None))
        self._refuse_unseen_inputs(videos=bool(videos), audio=kwargs.pop("audio", None) is not None)
        if text is None:
            raise ValueError("text is required: write one image token per image where the image belongs.")
        output_kwargs = self._merge_kwargs(
            self.valid_processor_kwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs = output_kwargs["text_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        # Flat processor kwargs on 5.x, mirrored into `text_kwargs` when passed; text kwargs on 4.57.
        return_mm_token_type_ids = text_kwargs.pop(
            "return_mm_token_type_ids", output_kwargs.get("return_mm_token_type_ids", False)
        )
        return_replacement_offsets = text_kwargs.pop(
            "return_text_replacement_offsets", output_kwargs.get("return_text_replacement_offsets", False)
        )
        texts = [text] if isinstance(text, str) else list(text)
        images = [load_image(image) for image in _flatten(images)]

        num_placeholders = sum(sample.count(self.image_token) for sample in texts)
        if num_placeholders != len(images):
            raise ValueError(
                f"The text holds {num_placeholders} {self.image_token!r} tokens but {len(images)} images were given."
            )
        self._check_video_placeholders(texts, len(videos))
        videos_kwargs = output_kwargs["videos_kwargs"]
        return_metadata = videos_kwargs.get("return_metadata", False)
        videos, video_metadata = load_videos(videos, videos_kwargs, self.max_num_frames)
        data = self.extra_text_inputs(texts, len(images), text_kwargs)
        bos = self.tokenizer.bos_token
        starts_with_bos = [bos is not None and sample.startswith(bos) for sample in texts]
        if any(starts_with_bos) and "add_special_tokens" not in text_kwargs:
            if not all(starts_with_bos):
                raise ValueError(
                    f"Some texts start with {bos!r} and others do not; pass add_special_tokens to say whether the "
                    "tokenizer adds it."
                )
            text_kwargs["add_special_tokens"] = False
        text_kwargs.setdefault("padding", len(texts) > 1)  # a batch can always become tensors
        expanded, replacement_offsets = self._expand_placeholders(texts, images, videos)

        return_offsets = text_kwargs.pop("return_offsets_mapping", False)
        encoding = self.tokenizer(
            expanded, return_offsets_mapping=return_offsets or return_mm_token_type_ids, **text_kwargs
        )
        encoding.pop("token_type_ids", None)
        self._check_layout_kept(encoding["input_ids"], expanded)
        if return_mm_token_type_ids:
            encoding["mm_token_type_ids"] = _span_marks(encoding["offset_mapping"], replacement_offsets)
            if not return_offsets:
                encoding.pop("offset_mapping")
        data.update(encoding)
        if images:
            data.update(self.preprocess_images(images, **output_kwargs["images_kwargs"]))
        if videos:
            data.update(self.preprocess_videos(videos, **videos_kwargs))
            data["video_num_frames"] = [len(frames) for frames in videos]
        outputs = BatchFeature(data, tensor_type=return_tensors)
        if return_replacement_offsets:  # read by transformers' `apply_chat_template` for assistant masks
            outputs["text_replacement_offsets"] = replacement_offsets
        if return_metadata and videos:  # transformers' `return_metadata`: each video's fps and kept frame indices
            outputs["video_metadata"] = video_metadata
        return outputs

    def apply_chat_template(self, conversation, *args, **kwargs):
        """transformers', refusing first what the model could not see (`{"type": "video"}` items unless this
        processor takes videos, and audio items), before any file is loaded or a prompt rendered without them. The
        chat templates refuse them as well, for renderers outside this processor (`raise_exception`)."""
        types = _content_types(conversation)
        self._refuse_unseen_inputs(videos="video" in types, audio="audio" in types)
        return super().apply_chat_template(conversation, *args, **kwargs)

    def _refuse_unseen_inputs(self, videos: bool = False, audio: bool = False):
        name = type(self).__name__
        if audio:
            raise ValueError(f"{name} takes no audio: its model has no audio input, so the audio would be dropped.")
        if not videos or self.video_token_id is not None:
            return
        if self.video_token is None:
            raise ValueError(
                f"{name} takes no videos: its model has no video input, so the video would be dropped from the "
                "prompt and the model would answer without having seen it. Pass frames as images (one image token "
                "each), or use a model type that takes videos (voco_llama)."
            )
        raise ValueError(
            f"{name} cannot take videos: its tokenizer has no {self.video_token!r} token (a processor saved before "
            f"its model took videos). Rebuild it with {name}.from_config(config, tokenizer), which adds the token."
        )

    def _check_video_placeholders(self, texts: list[str], num_videos: int):
        """One video per video token, and never two video tokens in a row: their frames would read as one video."""
        if self.video_token_id is None:
            return
        num_placeholders = sum(sample.count(self.video_token) for sample in texts)
        if num_placeholders != num_videos:
            raise ValueError(
                f"The text holds {num_placeholders} {self.video_token!r} tokens but {num_videos} videos were given."
            )
        for index, sample in enumerate(texts):
            if self.video_token * 2 in sample:
                raise ValueError(
                    f"Sample {index} holds two {self.video_token!r} tokens with nothing between them: their frames "
                    "would be indistinguishable from one longer video. Write text (e.g. a newline) between them."
                )

    def image_text(self, image_size: tuple[int, int]) -> str:
        """What one `<image>` of the text becomes, given the image's (height, width): its placeholders (and, for
        some methods, layout text)."""
        return self.image_token * self.image_token_counts([image_size])[0]

    def video_text(self, frame_sizes: list[tuple[int, int]]) -> str:
        """What one `<video>` of the text becomes, given its kept frames' (height, width): each frame laid out as
        `image_text` lays out an image, with video tokens for placeholders, and nothing between frames."""
        return "".join(self.image_text(size).replace(self.image_token, self.video_token) for size in frame_sizes)

    def expand_image_tokens(self, texts: list[str], images: list, videos: list = ()) -> list[str]:
        """Each `<image>` replaced by `image_text` of the next image (a PIL image), and each `<video>` by
        `video_text` of the next video (a list of PIL frames), in text order across the texts."""
        return self._expand_placeholders(texts, images, videos)[0]

    def _expand_placeholders(
        self, texts: list[str], images: list, videos: list = ()
    ) -> tuple[list[str], list[list[dict]]]:
        """The expanded texts and, per text, where each placeholder was and what replaced it (transformers'
        `text_replacement_offsets`)."""
        tokens = [self.image_token] + ([self.video_token] if self.video_token_id is not None else [])
        pattern = re.compile("|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True)))
        remaining = {self.image_token: iter(images), self.video_token: iter(videos)}
        expanded, offsets = [], []
        for sample in texts:
            result, end, replacements = "", 0, []
            for match in pattern.finditer(sample):
                result += sample[end : match.start()]
                item = next(remaining[match.group()], None)
                if item is None:
                    raise ValueError(f"The texts hold more {match.group()!r} tokens than the inputs given for them.")
                if match.group() == self.image_token:
                    kind, replacement = "image", self.image_text((item.height, item.width))
                else:
                    kind, replacement = "video", self.video_text([(frame.height, frame.width) for frame in item])
                replacements.append(
                    {
                        "type": kind,
                        "span": match.span(),
                        "new_span": (len(result), len(result) + len(replacement)),
                        "text": match.group(),
                        "replacement": replacement,
                    }
                )
                result += replacement
                end = match.end()
            expanded.append(result + sample[end:])
            offsets.append(replacements)
        return expanded, offsets

    def _check_layout_kept(self, input_ids, texts: list[str]):
        """Truncation that cuts through an image's (a video's) tokens is an error, never a silently shifted layout."""
        self._check_token_kept(input_ids, texts, self.image_token, self.image_token_id)
        if self.video_token_id is not None:
            self._check_token_kept(input_ids, texts, self.video_token, self.video_token_id)

    def _check_token_kept(self, input_ids, texts: list[str], token: str, token_id: int):
        for index, (ids, text) in enumerate(zip(input_ids, texts, strict=True)):
            ids = ids.tolist() if hasattr(ids, "tolist") else ids
            kept, count = ids.count(token_id), text.count(token)
            if kept != count:
                raise ValueError(
                    f"Sample {index}: truncation kept {kept} of its {count} {token!r} tokens; raise max_length "
                    f"(model_max_length is {self.tokenizer.model_max_length}) or shorten the text."
                )

    @property
    def model_input_names(self) -> list[str]:
        names = [name for name in self.tokenizer.model_input_names if name != "token_type_ids"]
        names += [name for name in self.image_processor.model_input_names if name not in names]
        return names + (["pixel_values_videos", "video_num_frames"] if self.video_token_id is not None else [])


def _flatten(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flatten(item)]
    return [images]


def _content_types(conversation) -> set:
    """The `type` of every content item of a conversation or a batch of them."""
    conversation = getattr(conversation, "messages", conversation)
    if isinstance(conversation, dict):
        content = conversation.get("content")
        if not isinstance(content, (list, tuple)):
            return set()
        return {item.get("type") for item in content if isinstance(item, dict)}
    if isinstance(conversation, (list, tuple)):
        return set().union(*(_content_types(item) for item in conversation))
    return set()


# transformers' `mm_token_type_ids` values.
SPAN_MARKS = {"image": 1, "video": 2}


def _span_marks(offset_mapping, replacement_offsets: list[list[dict]]) -> list[list[int]]:
    """1 for every token inside an image's expanded text (placeholders and layout text alike), 2 inside a video's,
    as transformers' processors mark a medium's whole span in `mm_token_type_ids`; 0 elsewhere (added special
    tokens, padding)."""
    marks = []
    for offsets, replacements in zip(offset_mapping, replacement_offsets, strict=True):
        spans = [(*replacement["new_span"], SPAN_MARKS[replacement["type"]]) for replacement in replacements]
        row = []
        for start, end in (offset.tolist() if hasattr(offset, "tolist") else offset for offset in offsets):
            row.append(next((mark for low, high, mark in spans if end > start and low <= start and end <= high), 0))
        marks.append(row)
    return marks
