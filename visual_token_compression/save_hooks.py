"""What runs after a model's or processor's `save_pretrained`: hooks that the installed package registers.

The package (`auto.register_all`) registers the writer of the remote-code bundle and the `auto_map`s
(`remote_code.write_remote_code`), so that every folder it saves is Hub-ready. This module is bundled with that code
too, where no hook is registered: a bundled copy loaded with `trust_remote_code=True` is saved by transformers' own
`custom_object_save`, and this package may not even be installed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

_AFTER_SAVE: list[Callable] = []


def register_after_save(hook: Callable) -> None:
    """Run `hook(obj, folder)` after every `save_pretrained` of a model or processor of this package (once)."""
    if hook not in _AFTER_SAVE:
        _AFTER_SAVE.append(hook)


def run_after_save(obj, folder: str | Path) -> None:
    """Called by the `save_pretrained` overrides once transformers has written the folder."""
    for hook in list(_AFTER_SAVE):
        hook(obj, folder)
