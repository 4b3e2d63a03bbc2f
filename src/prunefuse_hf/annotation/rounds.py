"""A run's annotation rounds as the report shows them: the images annotators skipped (each query's
`skipped.json`, written by `ingest_labels`) and, from `labels.parquet`, how often several annotators answered,
agreed, or needed a policy to decide."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..constants import POOL_INDEX, QUERIES_DIR, QUERY_SKIPPED
from .store import LabelStore


def skipped_indices(run_dir: str | os.PathLike, *, for_selection: bool = False) -> dict[int, np.ndarray]:
    """
    The pool indices annotators skipped, per round (from each query's `skipped.json`).

    Args:
        run_dir (`str` or `os.PathLike`): The run directory.
        for_selection (`bool`, *optional*, defaults to `False`): Leave out the rounds ingested with
            `requery_skipped` (their images may be queried again).

    Returns:
        `dict[int, np.ndarray]`: round -> skipped pool indices (int64), for rounds with skips.
    """
    found = {}
    for path in sorted(Path(run_dir, QUERIES_DIR).glob(f"round_*/{QUERY_SKIPPED}")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if for_selection and record.get("requery"):
            continue
        found[int(path.parent.name.split("_")[1])] = np.asarray(record[POOL_INDEX], dtype=np.int64)
    return found


def annotation_summary(run_dir: str | os.PathLike, class_names: list[str]) -> dict[int, dict]:
    """
    Per round: how many labels came from several annotators, how many of those agreed, how the rest were
    resolved, and how many images were skipped; for the report.

    Args:
        run_dir (`str` or `os.PathLike`): The run directory.
        class_names (`list[str]`): The run's class names.

    Returns:
        `dict[int, dict]`: round -> `{"labeled", "multi", "agreed", "resolved": {policy: n}, "annotators",
        "skipped"}`, for the rounds with labels from an annotation tool or with skips.
    """
    table = LabelStore(run_dir, class_names).table().to_pydict()
    summary: dict[int, dict] = {}
    for round_, answers, how, who in zip(
        table["round"], table["num_answers"], table["resolution"], table["annotator"]
    ):
        if how is None:
            continue
        entry = summary.setdefault(
            round_, {"labeled": 0, "multi": 0, "agreed": 0, "resolved": {}, "annotators": set(), "skipped": 0}
        )
        entry["labeled"] += 1
        entry["annotators"].add(who)
        if answers and answers > 1:
            entry["multi"] += 1
            if how == "agreed":
                entry["agreed"] += 1
            else:
                entry["resolved"][how] = entry["resolved"].get(how, 0) + 1
    for round_, skipped in skipped_indices(run_dir).items():
        entry = summary.setdefault(
            round_, {"labeled": 0, "multi": 0, "agreed": 0, "resolved": {}, "annotators": set(), "skipped": 0}
        )
        entry["skipped"] = int(skipped.size)
    for entry in summary.values():
        entry["annotators"] = len(entry["annotators"] - {None})
    return dict(sorted(summary.items()))
