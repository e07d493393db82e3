"""Start a compressed VLM from an llava-hf checkpoint (`vtc convert llava-hf` as a script).

    python conversion_scripts/convert_llava_hf_to_compressed.py --llava LLAVA_HF_DIR --model-type tokenpacker \
        --output OUT [--config scale_factor=3]

The vision tower and LLM are reused, the compressor is freshly initialised: ready for stage-1 training.
"""

from __future__ import annotations

import sys

from visual_token_compression.tools.conversion.cli import convert_cli


def main(argv: list[str] | None = None) -> int:
    return convert_cli(["llava-hf", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
