import os
import sys
from pathlib import Path

import torch

# conversion_scripts/ is a folder of runnable scripts, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Under pytest-xdist (`make test` runs `-n auto`) every worker would start as many torch threads as there are cores:
# the cores are shared out instead, so that N workers never run N x cores threads. The subprocesses a test starts get
# the same count (OMP_NUM_THREADS), so that a run split between a test and its child (resume after a kill) sums its
# floats in the same order as one run in the test.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def pytest_collection_modifyitems(config, items):
    """Modules holding a `slow` test (the full demos, minutes each) first, so that pytest-xdist, which hands out
    whole modules in this order, starts the longest work at once instead of leaving it to one worker at the end."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
