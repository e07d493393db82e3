"""Conversation templates for training: text segments, each marked as supervised (assistant) or not.

`plain` (stage 1 of every original): the image followed by its caption; only the caption is supervised.
`vicuna_v1` (stage 2): the Vicuna v1 chat the processors' chat template renders, BOS included (the processor then
adds no second one); only assistant turns and their EOS are supervised.
"""

from __future__ import annotations

from collections.abc import Callable

from ...processing.chat_templates import VICUNA_V1_SYSTEM

Segment = tuple[str, bool]  # (text, supervised)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _turns(conversations: list[dict]) -> list[tuple[str, str]]:
    turns = []
    for turn in conversations:
        speaker = turn.get("from", turn.get("role"))
        if speaker not in ROLES:
            raise ValueError(f"Unknown speaker {speaker!r} in a conversation; expected one of {sorted(ROLES)}.")
        turns.append((ROLES[speaker], turn.get("value", turn.get("content", ""))))
    return turns


def _image_first(text: str, image_token: str) -> str:
    """LLaVA's preprocessing: a turn's image placeholders move to its start, each followed by a newline."""
    count = text.count(image_token)
    if not count:
        return text
    return (image_token + "\n") * count + text.replace(image_token, "").strip()


def plain(conversations: list[dict], image_token: str, eos_token: str, bos_token: str | None) -> list[Segment]:
    """`<image>` + caption + newline: the human turn is dropped, as in LLaVA's `preprocess_plain` (whose BOS the
    tokenizer adds)."""
    turns = _turns(conversations)
    answers = [text for role, text in turns if role == "assistant"]
    if len(answers) != 1:
        raise ValueError(f"The plain template needs exactly one assistant turn, got {len(answers)}.")
    images = sum(text.count(image_token) for _, text in turns)
    return [(image_token * images, False), (answers[0] + "\n", True)]


def vicuna_v1(conversations: list[dict], image_token: str, eos_token: str, bos_token: str | None) -> list[Segment]:
    """<s>SYSTEM USER: <image>\\nQ ASSISTANT: A</s>USER: ... (the format of the processors' chat template)."""
    turns = _turns(conversations)
    system = VICUNA_V1_SYSTEM
    if turns and turns[0][0] == "system":
        system, turns = turns[0][1], turns[1:]
    segments = [((bos_token or "") + system + " ", False)]
    for role, text in turns:
        if role == "user":
            segments.append(("USER: " + _image_first(text, image_token) + " ASSISTANT:", False))
        else:
            # The space belongs to the answer, so a prompt ending in "ASSISTANT:" is what training saw.
            segments.append((" " + text + eos_token, True))
    return segments


TEMPLATES: dict[str, Callable[[list[dict], str, str, str | None], list[Segment]]] = {
    "plain": plain,
    "vicuna_v1": vicuna_v1,
}
