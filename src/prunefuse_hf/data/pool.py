"""`DataPool`: which examples of one base dataset are labeled, and in which round.

Bookkeeping is a few numpy arrays indexed by pool index (the row in the base dataset), as in baal:
`rounds[i] == 0` means unlabeled, `rounds[i] == k` means labeled in round k. Labeled and unlabeled
views are one `select` on the base dataset each, so a pool of millions of examples stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers.utils import logging

from ..constants import POOL_INDEX, SELECTION_LABEL, SELECTION_LABEL_NAME
from ..utils.io import atomic_write

logger = logging.get_logger(__name__)

_STATE_VERSION = 1
RANDOM_STRATEGY = "random"


class DataPool:
    """
    Labeled / unlabeled split of one `datasets.Dataset`, with the round, score and strategy of every
    labeling.

    Every example keeps its pool index (its row in `dataset`) for the whole run. `labeled` and
    `unlabeled` are views of `dataset`: row `j` of `pool.unlabeled` is pool index
    `pool.unlabeled_indices[j]`. The same pool serves simulation (the label column exists and labeling
    only reveals it) and real annotation (labels are added to the dataset elsewhere).

    Args:
        dataset (`datasets.Dataset`):
            The base dataset (the whole pool). Keep it unchanged: the saved state is tied to its fingerprint.

    Example:

    ```python
    >>> from prunefuse_hf.data import DataPool
    >>> pool = DataPool(load_image_dataset("fashion_mnist"))
    >>> pool.label_randomly(1000, seed=0)  # round 1
    >>> pool.label(top_indices, round=2, scores=top_scores, strategy="least_confidence")
    >>> pool.num_labeled, pool.current_round
    (2000, 2)
    >>> pool.save_selection("run/selection.parquet")
    ```
    """

    def __init__(self, dataset: datasets.Dataset):
        self.dataset = dataset
        size = len(dataset)
        self._rounds = np.zeros(size, dtype=np.int32)
        self._labels = np.full(size, -1, dtype=np.int64)
        self._scores = np.full(size, np.nan, dtype=np.float64)
        self._strategies: dict[int, str] = {}
        self._views: dict[str, object] = {}

    # ----- read-only state -----

    def __len__(self) -> int:
        return len(self._rounds)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_examples={len(self)}, num_labeled={self.num_labeled}, "
            f"current_round={self.current_round})"
        )

    @property
    def rounds(self) -> np.ndarray:
        """Round of every example (0 = unlabeled), as a read-only view."""
        view = self._rounds.view()
        view.flags.writeable = False
        return view

    @property
    def labels(self) -> np.ndarray:
        """Class id of every example (-1 while it has none), as a read-only view."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    @property
    def scores(self) -> np.ndarray:
        """Selection score of every example (NaN when none was given), as a read-only view."""
        view = self._scores.view()
        view.flags.writeable = False
        return view

    @property
    def strategies(self) -> dict[int, str]:
        """Strategy name per round (rounds labeled without a name are absent)."""
        return dict(self._strategies)

    @property
    def labeled_indices(self) -> np.ndarray:
        """Sorted pool indices of the labeled examples (`np.int64`)."""
        return self._cached("labeled_indices", lambda: np.flatnonzero(self._rounds > 0).astype(np.int64))

    @property
    def unlabeled_indices(self) -> np.ndarray:
        """Sorted pool indices of the unlabeled examples (`np.int64`)."""
        return self._cached("unlabeled_indices", lambda: np.flatnonzero(self._rounds == 0).astype(np.int64))

    @property
    def num_labeled(self) -> int:
        return len(self.labeled_indices)

    @property
    def num_unlabeled(self) -> int:
        return len(self) - self.num_labeled

    @property
    def current_round(self) -> int:
        """Latest round that labeled something (0 before any labeling)."""
        return int(self._rounds.max()) if len(self) else 0

    @property
    def labeled(self) -> datasets.Dataset:
        """The labeled examples, in pool-index order (one `select` on the base dataset, cached)."""
        return self._cached("labeled", lambda: self.dataset.select(self.labeled_indices))

    @property
    def unlabeled(self) -> datasets.Dataset:
        """The unlabeled examples, in pool-index order (one `select` on the base dataset, cached)."""
        return self._cached("unlabeled", lambda: self.dataset.select(self.unlabeled_indices))

    def _cached(self, key: str, build):
        # Views and index arrays are rebuilt only after a labeling changed the rounds.
        if key not in self._views:
            self._views[key] = build()
        value = self._views[key]
        if isinstance(value, np.ndarray):
            value = value.view()
            value.flags.writeable = False
        return value

    # ----- labeling -----

    def label_randomly(
        self, n: int, seed: int, round: int = 1, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """
        Label `n` unlabeled examples drawn uniformly at random (the initial labeled set by default).

        Args:
            n (`int`): How many examples to label.
            seed (`int`): Seed of the `numpy.random.default_rng` draw: the same seed and pool give the
                same indices.
            round (`int`, *optional*, defaults to 1): Round to record them in.
            labels (`np.ndarray`, *optional*): Class id of every pool example (indexed by pool index), from
                which the drawn examples' labels are taken (simulation).

        Returns:
            `np.ndarray`: the sorted pool indices that were labeled.
        """
        self._check_count(n)
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(self.unlabeled_indices, size=n, replace=False))
        drawn = None if labels is None else np.asarray(labels)[indices]
        self.label(indices, round=round, strategy=RANDOM_STRATEGY, labels=drawn)
        return indices

    def label(
        self,
        indices: Sequence[int] | np.ndarray,
        round: int,
        scores: Sequence[float] | np.ndarray | None = None,
        strategy: str | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """
        Mark `indices` as labeled in `round`. Everything is checked before anything changes.

        Args:
            indices (`Sequence[int]` or `np.ndarray`): Pool indices to label (distinct, unlabeled).
            round (`int`): Round number, at least 1.
            scores (`Sequence[float]`, *optional*): The selection score of each index, in the same order.
            strategy (`str`, *optional*): Name of the strategy that chose them; one name per round.
            labels (`Sequence[int]`, *optional*): The class id of each index, in the same order.

        Raises:
            `IndexError`: an index is outside the pool.
            `ValueError`: a repeated or already-labeled index, a round below 1, a scores length that does
                not match, or a second strategy name for the same round.
        """
        indices = np.asarray(indices)
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"Pool indices must be integers, got dtype {indices.dtype}.")
        indices = indices.astype(np.int64).reshape(-1)
        if not indices.size:
            raise ValueError("No pool indices given to label.")
        if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 1:
            raise ValueError(f"`round` must be an integer >= 1 (0 means unlabeled), got {round!r}.")
        outside = indices[(indices < 0) | (indices >= len(self))]
        if outside.size:
            raise IndexError(
                f"Pool index {int(outside[0])} is out of range for a pool of {len(self)} examples."
            )
        unique, counts = np.unique(indices, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"Pool index {int(unique[counts > 1][0])} appears more than once.")
        already = indices[self._rounds[indices] > 0]
        if already.size:
            index = int(already[0])
            raise ValueError(
                f"Pool index {index} is already labeled (round {int(self._rounds[index])}); "
                f"{already.size} of the {indices.size} indices are."
            )
        if scores is not None:
            scores = np.array(scores, dtype=np.float64).reshape(-1)
            if len(scores) != len(indices):
                raise ValueError(f"Got {len(scores)} scores for {len(indices)} indices.")
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if len(labels) != len(indices) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
                raise ValueError(f"Got {len(labels)} labels ({labels.dtype}) for {len(indices)} indices.")
            if (labels < 0).any():
                raise ValueError(f"Label {int(labels[labels < 0][0])} is not a class id (ids are >= 0).")
        known = self._strategies.get(int(round))
        if strategy is not None and known is not None and known != strategy:
            raise ValueError(f"Round {round} was labeled with strategy {known!r}, not {strategy!r}.")

        self._rounds[indices] = round
        if scores is not None:
            self._scores[indices] = scores
        if labels is not None:
            self._labels[indices] = labels
        if strategy is not None:
            self._strategies[int(round)] = strategy
        self._views.clear()
        logger.info(
            f"Labeled {len(indices)} examples in round {round} ({self.num_labeled}/{len(self)} labeled)."
        )

    def _check_count(self, n: int) -> None:
        if n <= 0 or n > self.num_unlabeled:
            raise ValueError(
                f"Cannot label {n} examples: it must be between 1 and the {self.num_unlabeled} unlabeled "
                f"examples left (pool of {len(self)})."
            )

    # ----- the selection as data -----

    def selection_table(
        self, class_names: list[str] | None = None, references: dict | None = None
    ) -> datasets.Dataset:
        """
        One row per labeled example, sorted by round then pool index: `pool_index`, `round`, `score` (null when
        none), `strategy` (null when none), `label` (class id, null when unknown), `label_name` (with
        `class_names`) and one column per entry of `references`.

        Args:
            class_names (`list[str]`, *optional*): Names of the class ids, for the `label_name` column.
            references (`dict[str, dict[int, str]]`, *optional*): Extra columns by pool index, e.g. the
                `image_path` each example was read from.

        Returns:
            `datasets.Dataset`: the selection, ready for `push_to_hub` or `to_parquet`.
        """
        return datasets.Dataset(datasets.table.InMemoryTable(self._selection_arrow(class_names, references)))

    def save_selection(
        self, path: str | Path, class_names: list[str] | None = None, references: dict | None = None
    ) -> Path:
        """
        Write [`selection_table`] to a parquet file (to a temporary name, then renamed into place).

        Args:
            path (`str` or `Path`): Destination file (parent directories are created).
            class_names, references: As in [`selection_table`].

        Returns:
            `Path`: the written file.
        """
        table = self._selection_arrow(class_names, references)
        return atomic_write(path, lambda f: pq.write_table(table, f), binary=True)

    def _selection_arrow(self, class_names=None, references=None) -> pa.Table:
        labeled = self.labeled_indices
        rounds = self._rounds[labeled]
        order = np.lexsort((labeled, rounds))
        labeled, rounds = labeled[order], rounds[order]
        labels = self._labels[labeled]
        columns = {
            POOL_INDEX: pa.array(labeled, pa.int64()),
            "round": pa.array(rounds, pa.int32()),
            # NaN ("no score") becomes null so that readers don't mistake it for a number.
            "score": pa.array(self._scores[labeled], pa.float64(), from_pandas=True),
            "strategy": pa.array([self._strategies.get(r) for r in rounds.tolist()], pa.string()),
            SELECTION_LABEL: pa.array(labels, pa.int64(), mask=labels < 0),
        }
        if class_names is not None:
            columns[SELECTION_LABEL_NAME] = pa.array(
                [class_names[y] if y >= 0 else None for y in labels.tolist()], pa.string()
            )
        for name, values in (references or {}).items():
            columns[name] = pa.array([values.get(i) for i in labeled.tolist()], pa.string())
        return pa.table(columns)

    # ----- state -----

    def state_dict(self, as_arrays: bool = False) -> dict:
        """
        JSON-serialisable state: rounds and scores per example (NaN as `None`), strategy per round,
        and the base dataset's size and fingerprint.

        Args:
            as_arrays (`bool`, *optional*, defaults to `False`): Give the per-example rounds, labels and scores
                as copies of the numpy arrays (scores keep NaN) instead of lists: no per-example Python object
                is built, which is what a large pool saved at every step needs.
        """
        if as_arrays:
            arrays = {
                "rounds": self._rounds.copy(),
                "labels": self._labels.copy(),
                "scores": self._scores.copy(),
            }
        else:
            arrays = {"rounds": self._rounds.tolist(), "labels": self._labels.tolist(),
                      "scores": [None if math.isnan(s) else s for s in self._scores.tolist()]}  # fmt: skip
        return {
            "version": _STATE_VERSION,
            "num_examples": len(self),
            "fingerprint": self.dataset._fingerprint,
            **arrays,
            "strategies": {str(r): name for r, name in sorted(self._strategies.items())},
        }

    def load_state_dict(self, state: dict, check_fingerprint: bool = True) -> None:
        """
        Restore a state from [`state_dict`]; the base dataset must be the one it was saved with.

        Args:
            state (`dict`): From [`state_dict`].
            check_fingerprint (`bool`, *optional*, defaults to `True`): Also require the same `datasets`
                fingerprint (the size is always checked). A caller that checks the rows' content itself can turn
                it off, so that a pool whose damaged files were repaired still matches.

        Raises:
            `ValueError`: the size or fingerprint of the dataset differs, or the state is malformed.
        """
        fingerprint = self.dataset._fingerprint
        same_fingerprint = not check_fingerprint or state.get("fingerprint") == fingerprint
        if state.get("num_examples") != len(self) or not same_fingerprint:
            raise ValueError(
                f"This pool state belongs to another dataset: saved for {state.get('num_examples')} examples "
                f"with fingerprint {state.get('fingerprint')!r}, but this dataset has {len(self)} examples "
                f"with fingerprint {fingerprint!r}. Load the same dataset, split and revision (and apply "
                "no transform to it) before restoring the pool."
            )
        rounds = np.array(state["rounds"], dtype=np.int32)  # copies: the pool's arrays change in place
        scores = state["scores"]
        if not isinstance(scores, np.ndarray):
            scores = [np.nan if s is None else s for s in scores]
        scores = np.array(scores, dtype=np.float64)
        if rounds.shape != (len(self),) or scores.shape != (len(self),) or (rounds < 0).any():
            raise ValueError(
                f"Malformed pool state: expected {len(self)} non-negative rounds and {len(self)} scores, "
                f"got {rounds.shape[0]} rounds and {scores.shape[0]} scores."
            )
        labels = np.array(state.get("labels", [-1] * len(self)), dtype=np.int64)
        if labels.shape != (len(self),):
            raise ValueError(f"Malformed pool state: expected {len(self)} labels, got {labels.shape[0]}.")
        self._rounds = rounds
        self._labels = labels
        self._scores = scores
        self._strategies = {int(r): name for r, name in state.get("strategies", {}).items()}
        self._views.clear()

    @classmethod
    def from_state_dict(cls, dataset: datasets.Dataset, state: dict) -> DataPool:
        """Build a pool over `dataset` and restore `state` into it (see [`load_state_dict`])."""
        pool = cls(dataset)
        pool.load_state_dict(state)
        return pool
