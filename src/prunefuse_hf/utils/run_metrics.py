"""A run's records as metrics: per-round results and the cost ledger (selection, fusion teacher, final
training) built from `state.json`, and the accuracy per labeled budget."""

from __future__ import annotations

import json
from pathlib import Path

from ..constants import METRICS_NAME


def build_metrics(progress: dict) -> dict:
    """Per-round records (sorted), the cost ledger and the final model's numbers.

    Costs are booked by what they are for: `selection` (surrogate trainings that fed a selection, every scoring
    pass, and the set-up before round 1 that only serves selection: pool features, a cold-start query, the
    surrogate's label-free distillation, recorded as round 1's `setup`; the feature proxy's refreshes and the dense
    trainings they read), `fusion_teacher` (surrogate trainings that only fed fusion or distillation) and
    `final_training` (every other training of the dense or fused model, re-synchronizations included). `dense_flops`
    is what dense-selector active learning would have spent on the same selection work.
    """
    rounds = [progress["rounds"][key] for key in sorted(progress["rounds"], key=int)]
    ledger = {
        purpose: {"seconds": 0.0, "flops": 0.0}
        for purpose in ("selection", "fusion_teacher", "final_training")
    }
    dense_flops = 0.0
    for record in rounds:
        surrogate = record.get("surrogate")
        if surrogate:
            purpose = surrogate.get("purpose", "selection")
            ledger[purpose]["seconds"] += surrogate["seconds"]
            ledger[purpose]["flops"] += surrogate["flops"]
            if purpose == "selection":
                dense_flops += surrogate["dense_flops"]
        dense = record.get("dense") or {}
        refresh_training = dense if dense.get("purpose") == "selection" else None
        for part in (
            record.get("setup"),
            record.get("selection"),
            record.get("proxy_refresh"),
            refresh_training,
        ):
            if part:
                ledger["selection"]["seconds"] += part["seconds"]
                ledger["selection"]["flops"] += part["flops"]
                dense_flops += part["dense_flops"]
        for part in (dense if refresh_training is None else None, record.get("sync")):
            if part:
                ledger["final_training"]["seconds"] += part["seconds"]
                ledger["final_training"]["flops"] += part["flops"]
    selection = ledger["selection"]
    return {
        "rounds": rounds,
        # The run's `pipeline()` task, and the evaluation metric of every record (`accuracy`; object detection's
        # `map`; semantic segmentation's `mean_iou`). Runs written before tasks were recorded are image classification.
        "task": progress.get("task", "image-classification"),
        "metric": progress.get("metric", "accuracy"),
        "final": progress.get("final", {}),
        "costs": progress.get("costs", {}),
        "selection": {
            **selection,
            "dense_flops": dense_flops,
            "flops_ratio": selection["flops"] / dense_flops if dense_flops else None,
        },
        "fusion_teacher": ledger["fusion_teacher"],
        "final_training": ledger["final_training"],
        "config": progress.get("settings", {}),
        "method_overrides": progress.get("method_overrides", {}),
        "class_names": progress.get("class_names"),
        "recipe": progress.get("recipe"),
    }


def budget_accuracies(metrics: dict, metric: str | None = None) -> dict[int, float]:
    """
    A metric of the trained dense/fused model at each labeled-set size the run evaluated it on.

    Args:
        metrics (`dict`): A run's `metrics.json` (see [`build_metrics`]).
        metric (`str`, *optional*): Any number of the task's evaluation, read from each record's `evaluation`
            (`map_50`, `mean_accuracy`); default: the run's metric (accuracy; mAP for detection, mean IoU for
            segmentation), which every record holds.

    Returns:
        `dict[int, float]`: labeled count -> value, for the records that hold it.

    Example:

    ```python
    >>> budget_accuracies({"metric": "map", "rounds": [{"dense": {"labeled": 100, "map": 0.2,
    ...                    "evaluation": {"map": 0.2, "map_50": 0.4}}}]}, "map_50")
    {100: 0.4}
    ```
    """
    return {
        record["dense"]["labeled"]: value
        for record in metrics["rounds"]
        if record.get("dense") and (value := record_metric(metrics, record["dense"], metric)) is not None
    }


def record_metric(metrics: dict, record: dict, metric: str | None = None):
    """`metric` of one model record of a run (its `evaluation`), the run's metric by default; `None` where the record
    does not hold it (no evaluation set, or a run written before records kept their evaluation)."""
    run_metric = metrics.get("metric", "accuracy")
    metric = metric or run_metric
    value = (record.get("evaluation") or {}).get(metric)
    return record.get(metric) if value is None and metric == run_metric else value


def load_metrics(run_dir) -> dict:
    with open(Path(run_dir) / METRICS_NAME) as f:
        return json.load(f)
