"""`vtc convert`: original checkpoints and llava-hf models -> `save_pretrained` folders of this library."""

from __future__ import annotations

import argparse
import logging

from ...registry import MODEL_TYPES
from ..config_args import add_config_argument, config_fields
from .checkpoint import convert_checkpoint
from .converters import CONVERTERS
from .llava_hf import convert_llava_hf

DTYPES = ("auto", "float32", "float16", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    """One source per registered model type with original checkpoints, plus the llava-hf start for every type."""
    parser = argparse.ArgumentParser(
        prog="vtc convert", description="Convert original checkpoints, or start a compressed VLM from llava-hf."
    )
    sources = parser.add_subparsers(dest="source", required=True)
    for method, converter in CONVERTERS.items():
        if converter is None:
            continue
        sub = sources.add_parser(method, help=f"an original {method} checkpoint folder (config.json + weights)")
        sub.add_argument("--checkpoint", required=True, help="folder of the original checkpoint")
        sub.add_argument("--vision-tower", help="folder of the vision tower (the originals save none)")
        sub.add_argument("--tokenizer", help="tokenizer folder, if not the checkpoint's")
        converter.add_arguments(sub)
        sub.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: the checkpoint's")
        add_config_argument(sub)
        _add_output(sub)

    llava = sources.add_parser("llava-hf", help="a compressed VLM on an llava-hf model's tower and LLM")
    llava.add_argument("--llava", required=True, help="folder of an llava-hf LlavaForConditionalGeneration")
    # No argparse `choices`: an unknown type is reported like every other conversion error.
    llava.add_argument("--model-type", required=True, help=f"the compressor: {', '.join(MODEL_TYPES)}")
    add_config_argument(llava)
    _add_output(llava)
    return parser


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="folder to write; must not exist unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def convert_cli(argv: list[str] | None = None) -> int:
    """Run `vtc convert ARGS`; returns the exit status (errors are printed, not raised)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    options = {k: v for k, v in vars(args).items() if k not in ("source", "config")}
    try:
        fields = config_fields(args.config)
        if args.source == "llava-hf":
            output = convert_llava_hf(
                options["llava"],
                options["model_type"],
                options["output"],
                overwrite=options["overwrite"],
                **fields,
            )
        else:
            output = convert_checkpoint(args.source, **options, config_overrides=fields)
    except (FileExistsError, FileNotFoundError, KeyError, ValueError) as error:
        print(f"vtc convert: error: {error}")
        return 1
    print(f"Converted model written to {output}")
    return 0
