"""A row's prefill as its bare parts, each called directly with the inputs the model gave it.

The parts are the vision tower, the compressor (our models' `compress` hook: layer selection, the compressor and what
it needs, as QueCC's question pass; Llava's projector), the embedding lookup, the scatter of the image features into
the placeholders, every pass of the language model and the LM head. One prefill of the model records their calls;
replaying them times the parts alone. The model's prefill time over their sum is our code's overhead: everything
else its forward does (checks, masks, positions, the glue between the parts).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache

from .measure import timed_call


@dataclass
class RecordedCall:
    """One top-level call of a part: which part, what to call and its inputs (caches copied as they were before the
    call)."""

    part: str
    function: object
    args: tuple
    kwargs: dict

    def inputs(self) -> tuple[tuple, dict]:
        """Its inputs, with fresh copies of any cache (a pass appends to the cache it is given)."""

        def fresh(value):
            return copy.deepcopy(value) if isinstance(value, Cache) else value

        return tuple(fresh(arg) for arg in self.args), {name: fresh(value) for name, value in self.kwargs.items()}


@dataclass
class Parts:
    """The recorded calls of one prefill, in order."""

    calls: list[RecordedCall] = field(default_factory=list)

    def seconds(self, device: torch.device) -> dict[str, float]:
        """Time every call on its own (copying caches outside the timed span); seconds per part."""
        totals = {}
        with torch.inference_mode():
            for call in self.calls:
                args, kwargs = call.inputs()
                _, seconds = timed_call(
                    lambda call=call, args=args, kwargs=kwargs: call.function(*args, **kwargs), device
                )
                totals[call.part] = totals.get(call.part, 0.0) + seconds
        return totals


def part_targets(model, baseline: bool) -> dict[str, object]:
    """Part name -> the module or (owner, method name) whose top-level calls are that part."""
    inner = model.model
    targets = {
        "vision": inner.vision_tower,
        "compressor": inner.multi_modal_projector if baseline else (inner, "compress"),
        "embedding": inner.get_input_embeddings(),
        "llm": inner.language_model,
        "head": model.lm_head,
    }
    if not baseline:
        targets["scatter"] = (inner, "merge_image_features")
    return targets


def record_parts(model, prefill, baseline: bool) -> Parts:
    """Run `prefill()` once and record the top-level calls of the model's parts (a part's calls of another part, as
    QueCC's question pass calls the language model, belong to it)."""
    parts, depth, undo = Parts(), [0], []

    def enter(part, function, args, kwargs):
        if depth[0] == 0:
            parts.calls.append(RecordedCall(part, function, *RecordedCall(part, None, args, kwargs).inputs()))
        depth[0] += 1

    def leave():
        depth[0] -= 1

    for part, target in part_targets(model, baseline).items():
        if isinstance(target, torch.nn.Module):
            pre = target.register_forward_pre_hook(
                lambda module, args, kwargs, part=part: enter(part, module, args, kwargs), with_kwargs=True
            )
            post = target.register_forward_hook(lambda *_: leave())
            undo += [pre.remove, post.remove]
        else:
            owner, name = target
            original = getattr(owner, name)

            def wrapped(*args, _original=original, _part=part, **kwargs):
                enter(_part, _original, args, kwargs)
                try:
                    return _original(*args, **kwargs)
                finally:
                    leave()

            setattr(owner, name, wrapped)
            undo.append(lambda owner=owner, name=name: delattr(owner, name))
    try:
        prefill()
    finally:
        for remove in reversed(undo):
            remove()
    return parts
