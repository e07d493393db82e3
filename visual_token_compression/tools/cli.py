"""`vtc`: the command line of visual_token_compression.

vtc demo | train | generate | bench | convert | push | scaling-law
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..processing.images import load_image
from ..registry import MODEL_TYPES
from .config_args import add_config_argument, config_fields

# Each subcommand's code is imported when it runs: `vtc train`, `vtc demo`, `vtc bench` and `vtc scaling-law` need
# the `train` extra (datasets, evaluate, peft; matplotlib and scipy), which `vtc generate` or `vtc push` do not.


def _refuse_flags(args, demo: str, models: str):
    """`--video` and `--regions` train their own models: the image demo's flags do not apply to them."""
    given = {
        "--model-type": args.model_type != "tokenpacker",
        "--config": bool(args.config),
        "--llm": args.llm != "tiny",
        "--speed-preset": args.speed_preset != "small",
    }
    if any(given.values()):
        raise ValueError(
            f"vtc demo {demo} trains its own models ({models}): "
            f"{', '.join(flag for flag, flagged in given.items() if flagged)} does not apply to it."
        )


def _demo(args) -> int:
    if args.video:
        from .demo_video import run_video_demo

        _refuse_flags(args, "--video", "VoCo-LLaMA video, its order-blind control, LLaVA")
        if args.regions:
            raise ValueError("vtc demo takes --video or --regions, not both.")
        run_video_demo(save=args.save, overwrite=args.overwrite, steps_scale=args.steps_scale, seed=args.seed)
        return 0
    if args.regions:
        from .demo_regions import run_region_demo

        _refuse_flags(args, "--regions", "TokenPacker-HD with its region extractor")
        run_region_demo(save=args.save, overwrite=args.overwrite, steps_scale=args.steps_scale, seed=args.seed)
        return 0
    from .demo import run_demo

    run_demo(
        args.model_type,
        llm=args.llm,
        save=args.save,
        overwrite=args.overwrite,
        steps_scale=args.steps_scale,
        seed=args.seed,
        speed_preset=args.speed_preset,
        **config_fields(args.config),
    )
    return 0


def _generate(args) -> int:
    from transformers import pipeline

    generator = pipeline("image-text-to-text", model=args.model)
    content = [{"type": "image", "image": load_image(args.image)}, {"type": "text", "text": args.prompt}]
    answer = generator(
        text=[{"role": "user", "content": content}],
        max_new_tokens=args.max_new_tokens,
        generate_kwargs={"do_sample": False},
    )
    print(answer[0]["generated_text"][-1]["content"])
    return 0


def _push(args) -> int:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .hub import push_to_hub, save_for_hub

    model = AutoModelForImageTextToText.from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    card = {"base_models": args.base_model or (), "license": args.license}  # None without any --base-model
    if args.local_dir:
        print(save_for_hub(model, processor, args.local_dir, **card))
    else:
        print(push_to_hub(model, processor, args.repo_id, private=args.private, **card))
    return 0


# Subcommands whose own parsers read the rest of the command line.
PASS_THROUGH = {
    "train": ("visual_token_compression.tools.training.train", "main"),
    "bench": ("visual_token_compression.tools.benchmarks.cli", "bench_cli"),
    "convert": ("visual_token_compression.tools.conversion.cli", "convert_cli"),
    "scaling-law": ("visual_token_compression.tools.scaling", "scaling_law_cli"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtc", description="Visual-token compression for transformers VLMs.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "stage 1/2 training with Trainer (see `vtc train --help`)"),
        ("bench", "efficiency benchmark against HF Llava (see `vtc bench --help`)"),
        ("convert", "original checkpoints or llava-hf -> this library (see `vtc convert --help`)"),
        ("scaling-law", "fit QueCC's scaling law and plot it (see `vtc scaling-law --help`)"),
    ):
        commands.add_parser(name, help=help_text, add_help=False)

    demo = commands.add_parser("demo", help="train on procedural scenes and report accuracy (no downloads)")
    demo.add_argument("--model-type", default="tokenpacker", choices=sorted(MODEL_TYPES))
    demo.add_argument(
        "--llm",
        default="tiny",
        choices=["tiny", "smollm2"],
        help="tiny random Llama (fits 5 minutes on 2 cores) or the real SmolLM2-135M",
    )
    add_config_argument(demo, example="patch_num=9 (TokenPacker-HD)")
    demo.add_argument("--steps-scale", type=float, default=1.0, help="multiply the training steps")
    demo.add_argument("--seed", type=int, default=0, help="seed of the scenes, the random parts and training")
    demo.add_argument("--save", default=None, help="keep the trained model and processor in this folder")
    demo.add_argument("--overwrite", action="store_true", help="allow --save into a non-empty folder")
    demo.add_argument(
        "--speed-preset",
        default="small",
        help="the `vtc bench --preset` (tiny, small, llava-7b) at whose shapes, with random weights, the table's "
        "speed-up and KV columns are measured",
    )
    demo.add_argument(
        "--regions",
        action="store_true",
        help="TokenPacker-HD with Osprey's region extractor, asked about one shape of a scene by its mask",
    )
    demo.add_argument(
        "--video",
        action="store_true",
        help="VoCo-LLaMA on clips of a moving shape, against its order-blind control and LLaVA keeping every frame",
    )
    demo.set_defaults(func=_demo)

    generate = commands.add_parser("generate", help="answer a question about an image with a saved model")
    generate.add_argument("--model", required=True, help="a save_pretrained folder")
    generate.add_argument("--image", required=True)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.set_defaults(func=_generate)

    push = commands.add_parser("push", help="publish a saved model with remote code and a model card")
    push.add_argument("--model", required=True, help="a save_pretrained folder")
    push.add_argument("--repo-id", help="Hub repository, e.g. you/tokenpacker-7b")
    push.add_argument("--local-dir", help="write the Hub folder here instead of uploading")
    push.add_argument("--base-model", action="append", default=None, help="base model id(s) for the card")
    push.add_argument("--license", default="apache-2.0")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASS_THROUGH:
        module, function = PASS_THROUGH[argv[0]]
        result = getattr(importlib.import_module(module), function)(argv[1:])
        return result if isinstance(result, int) else 0
    args = build_parser().parse_args(argv)
    if args.command == "push" and not (args.repo_id or args.local_dir):
        build_parser().error("push needs --repo-id or --local-dir")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
