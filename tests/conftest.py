import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers.video_utils
from transformers.video_utils import VideoMetadata

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
    """The longest modules first: pytest-xdist hands whole modules to the workers in this order (`make test` keeps
    it with `--no-loadscope-reorder`; by default xdist would order modules by their number of tests, which leaves the
    demos, few tests of minutes each, to the end). So one worker starts the video demo at once while the other runs
    the image and region demos and then the rest. A module weighs the largest `minutes=` of its `slow` marks (about
    its minutes on one core: a scheduling hint, nothing is asserted on it)."""
    weight: dict[str, float] = {}
    for item in items:
        minutes = max((mark.kwargs.get("minutes", 0) for mark in item.iter_markers("slow")), default=0)
        weight[item.module.__name__] = max(weight.get(item.module.__name__, 0), minutes)
    items.sort(key=lambda item: -weight[item.module.__name__])  # stable: each module's tests stay together, in order


@pytest.fixture()
def npy_decoder(monkeypatch):
    """transformers' pyav decoder replaced by one that reads `.npy` clips at 10 fps and records the frames it was asked
    to decode: `load_video` itself runs unchanged (path checks, backend choice, our sampler called before decoding)."""
    requested = []

    def read_npy(path, sample_indices_fn, **kwargs):
        video = np.load(path)
        metadata = VideoMetadata(total_num_frames=len(video), fps=10.0, video_backend="pyav")
        indices = sample_indices_fn(metadata=metadata, **kwargs)
        requested.append(list(indices))
        metadata.frames_indices = indices
        return video[indices], metadata

    monkeypatch.setattr(transformers.video_utils, "is_av_available", lambda: True)
    monkeypatch.setitem(transformers.video_utils.VIDEO_DECODERS, "pyav", read_npy)
    return requested
