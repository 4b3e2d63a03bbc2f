"""Accuracy as a local `evaluate` module: `evaluate.load` on this file needs no Hub access.

It computes the same value as the Hub's `evaluate-metric/accuracy` (the fraction of predictions equal to their
references, optionally weighted) with numpy only, so it runs wherever the package runs. The file must stay
self-contained: `evaluate` copies it alone into its module cache before importing it.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among the total number of cases processed:
Accuracy = (TP + TN) / (TP + TN + FP + FN).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels.
    references (`list` of `int`): Ground truth labels.
    normalize (`bool`, defaults to `True`): If False, return the number of correctly classified samples.
        Otherwise, return the fraction of correctly classified samples.
    sample_weight (`list` of `float`, defaults to None): Sample weights.

Returns:
    accuracy (`float` or `int`): Accuracy score. Between 0 and 1 when `normalize` is True (weighted when
        `sample_weight` is given), else the (weighted) number of correct predictions.

Example:
    >>> accuracy_metric = evaluate.load("path/to/prunefuse_hf/metrics/accuracy.py")
    >>> accuracy_metric.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0])
    {'accuracy': 0.5}
"""

_CITATION = ""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        correct = np.asarray(predictions) == np.asarray(references)
        weights = (
            np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        )
        score = float(np.sum(weights * correct))
        if normalize:
            score = score / float(np.sum(weights)) if len(correct) else 0.0
        return {"accuracy": score}
