"""Convert an original TokenPacker / TokenPacker-HD checkpoint to `TokenPackerForConditionalGeneration` (`vtc convert tokenpacker` as a script).

    python conversion_scripts/convert_tokenpacker_original_to_hf.py --checkpoint DIR --vision-tower TOWER_DIR --output OUT

The logic lives in `visual_token_compression.tools.conversion.tokenpacker` so that the installed `vtc` reaches it;
`convert_state_dict` is re-exported here as the conversion contract (pure, raises on unknown keys).
"""

from __future__ import annotations

import sys

from visual_token_compression.tools.conversion.cli import convert_cli
from visual_token_compression.tools.conversion.tokenpacker import convert_state_dict

__all__ = ["convert_state_dict", "main"]


def main(argv: list[str] | None = None) -> int:
    return convert_cli(["tokenpacker", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
