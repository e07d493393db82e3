"""Convert an original VoCo-LLaMA checkpoint to `VoCoLlamaForConditionalGeneration` (`vtc convert voco_llama` as a script).

    python conversion_scripts/convert_voco_llama_original_to_hf.py --checkpoint DIR --vision-tower TOWER_DIR --output OUT

The logic lives in `visual_token_compression.tools.conversion.voco_llama` so that the installed `vtc` reaches it;
`convert_state_dict` is re-exported here as the conversion contract (pure, raises on unknown keys).
"""

from __future__ import annotations

import sys

from visual_token_compression.tools.conversion.cli import convert_cli
from visual_token_compression.tools.conversion.voco_llama import convert_state_dict

__all__ = ["convert_state_dict", "main"]


def main(argv: list[str] | None = None) -> int:
    return convert_cli(["voco_llama", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
