"""Evaluation helpers: the VQA accuracy metric (an `evaluate` module) and answering held-out questions."""

from pathlib import Path

import evaluate

METRIC_PATH = Path(__file__).with_name("vqa_accuracy.py")


def load_vqa_accuracy() -> evaluate.EvaluationModule:
    """The metric, loaded through `evaluate` from the package (no download)."""
    return evaluate.load(str(METRIC_PATH))
