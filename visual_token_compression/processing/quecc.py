"""QueCC processor: the usual placeholders, plus the question each image is compressed for."""

from __future__ import annotations

from transformers.feature_extraction_utils import BatchFeature

from .base import CompressedVLMProcessor, _flatten

_USER_PROBE, _ASSISTANT_PROBE = "\x00quecc-user\x00", "\x00quecc-assistant\x00"


class QueCCProcessor(CompressedVLMProcessor):
    """One padded view per image with (grid / stride)^2 placeholders, and `query_input_ids` /
    `query_attention_mask`: one row per image (in image order across the batch) holding that image's question.

    The question of an image is the text that follows it up to the end of its user turn, with other image tokens
    removed and whitespace stripped; it is what the original extracts at inference ("<image>\\nQ ASSISTANT:" -> Q).
    The end of a user turn is read from this processor's own chat template (rendered with probe messages), so any
    template works, not only Vicuna's "ASSISTANT". A text without that marker is one unfinished user turn: the
    rest of the text is the question. Pass `queries=` (one string per image) to set the questions yourself, e.g.
    `""` for LLaVA `plain` captions, whose text is the answer.

    Questions are tokenized as raw text with the tokenizer's special tokens (BOS for Llama) and no chat template,
    as the original; an empty question is then BOS alone.
    """

    def turn_end_marker(self) -> str | None:
        """What the chat template writes between a user message and the assistant's reply ("ASSISTANT:")."""
        conversation = [
            {"role": "user", "content": _USER_PROBE},
            {"role": "assistant", "content": _ASSISTANT_PROBE},
        ]
        rendered = self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, tokenize=False)
        start, end = rendered.find(_USER_PROBE), rendered.find(_ASSISTANT_PROBE)
        if start < 0 or end < start:
            return None
        return rendered[start + len(_USER_PROBE) : end].strip() or None

    def extract_queries(self, texts: list[str]) -> list[str]:
        """The question of every image in `texts`, in image order."""
        marker = self.turn_end_marker()
        queries = []
        for text in texts:
            pieces = text.split(self.image_token)
            for index in range(1, len(pieces)):
                tail = self.image_token.join(pieces[index:])
                if marker is not None and marker in tail:
                    tail = tail[: tail.index(marker)]
                queries.append(tail.replace(self.image_token, "").strip())
        return queries

    def __call__(self, images=None, text=None, return_tensors=None, queries=None, **kwargs) -> BatchFeature:
        kwargs.update(kwargs.pop("processor_kwargs", None) or {})
        queries = kwargs.pop("queries", queries)
        encoding = super().__call__(images=images, text=text, return_tensors=return_tensors, **kwargs)
        num_images = len(_flatten(images))
        if queries is None:
            queries = self.extract_queries([text] if isinstance(text, str) else list(text))
        elif isinstance(queries, str):
            queries = [queries]
        if len(queries) != num_images:
            raise ValueError(f"QueCC needs one query per image: got {len(queries)} queries for {num_images} images.")
        if num_images:
            query = self.tokenizer(list(queries), padding=True, return_tensors=return_tensors)
            encoding["query_input_ids"] = query["input_ids"]
            encoding["query_attention_mask"] = query["attention_mask"]
        return encoding

    @property
    def model_input_names(self) -> list[str]:
        return super().model_input_names + ["query_input_ids", "query_attention_mask"]
