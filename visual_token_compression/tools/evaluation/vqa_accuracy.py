"""Short-answer VQA accuracy as an `evaluate` metric: exact match after normalising case, punctuation and articles."""

import re
import string

import datasets
import evaluate

_DESCRIPTION = "Fraction of predictions whose first normalised word(s) equal the reference answer."
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


class VqaAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description="predictions: generated answers; references: gold short answers",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        hits = 0
        for prediction, reference in zip(predictions, references, strict=True):
            reference = normalize(reference)
            words = normalize(prediction).split()
            hits += " ".join(words[: len(reference.split())]) == reference
        return {"accuracy": hits / len(references) if references else 0.0}
