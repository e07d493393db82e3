"""`--config FIELD=VALUE`: a method's config fields on the command line, shared by `vtc demo` and `vtc convert`."""

from __future__ import annotations

import argparse
import json


def add_config_argument(parser: argparse.ArgumentParser, example: str = "scale_factor=3") -> None:
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"a method config field, e.g. {example} (repeat for several)",
    )


def config_fields(pairs: list[str]) -> dict:
    """`FIELD=VALUE` pairs as config keyword arguments, each value read as JSON where it parses (3, true, [1, 2])."""
    fields = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--config takes FIELD=VALUE, got {pair!r}.")
        try:
            fields[name] = json.loads(value)
        except json.JSONDecodeError:
            fields[name] = value
    return fields
