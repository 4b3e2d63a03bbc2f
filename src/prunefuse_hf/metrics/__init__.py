"""Evaluation metrics shipped with the package as local `evaluate` modules (the Hub is not needed to load them)."""

import os

ACCURACY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "accuracy.py")


def load_accuracy(**kwargs):
    """
    Load the accuracy metric with `evaluate.load` from the module shipped in this package.

    The Hub's `"accuracy"` gives the same values but `evaluate` downloads its script, which fails offline; loading
    the local file never touches the network.

    Args:
        kwargs: passed to `evaluate.load` (e.g. `keep_in_memory=True`).

    Returns:
        `evaluate.EvaluationModule`: the accuracy metric.
    """
    import evaluate

    return evaluate.load(ACCURACY_PATH, **kwargs)
