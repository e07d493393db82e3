import os
import sys
from pathlib import Path

import torch

# conversion_scripts/ is a folder of runnable scripts, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Under pytest-xdist (`make test` runs `-n auto`) every worker would start as many torch threads as there are cores:
# the cores are shared out instead, so that N workers never run N x cores threads.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
