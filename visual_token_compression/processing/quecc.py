"""QueCC processor: the usual placeholders, plus the question each image is compressed for."""

from transformers.processing_utils import TextKwargs

from .base import CompressedVLMProcessor, CompressedVLMProcessorKwargs

# No `from __future__ import annotations` here: transformers reads the kwargs TypedDicts' annotations as classes.

_USER_PROBE, _ASSISTANT_PROBE = "\x00quecc-user\x00", "\x00quecc-assistant\x00"


class QueCCTextKwargs(TextKwargs, total=False):
    queries: str | list[str] | None


class QueCCProcessorKwargs(CompressedVLMProcessorKwargs, total=False):
    # A text kwarg, so that 4.57's kwargs merging (which knows no flat processor kwargs) routes it too.
    text_kwargs: QueCCTextKwargs
    _defaults = {}  # 4.57 reads it from every kwargs class; TypedDicts do not inherit class attributes


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

    valid_processor_kwargs = QueCCProcessorKwargs

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

    def prompt_conditioning_kwargs(self, prompt: str) -> dict:
        """Each image's question read from the prompt alone. A `plain` training text has no turn marker, so reading
        it from the whole text would condition the compressor on the caption it must predict (the original's
        `plain` query is empty)."""
        return {"queries": self.extract_queries([prompt])}

    def extra_text_inputs(self, texts: list[str], num_images: int, text_kwargs: dict) -> dict:
        queries = text_kwargs.pop("queries", None)
        if queries is None:
            queries = self.extract_queries(texts)
        elif isinstance(queries, str):
            queries = [queries]
        if len(queries) != num_images:
            raise ValueError(f"QueCC needs one query per image: got {len(queries)} queries for {num_images} images.")
        if not num_images:
            return {}
        query = self.tokenizer(list(queries), padding=True)
        return {"query_input_ids": query["input_ids"], "query_attention_mask": query["attention_mask"]}

    @property
    def model_input_names(self) -> list[str]:
        return super().model_input_names + ["query_input_ids", "query_attention_mask"]
