"""The few places where transformers 4.57 and 5.x need different spellings of the same thing."""

from __future__ import annotations

import transformers
from packaging import version

TRANSFORMERS_V5 = version.parse(transformers.__version__).major >= 5

# 5.x maps each tied parameter to its source; 4.x lists the tied parameters only.
TIED_LM_HEAD = (
    {"lm_head.weight": "model.language_model.embed_tokens.weight"} if TRANSFORMERS_V5 else ["lm_head.weight"]
)
