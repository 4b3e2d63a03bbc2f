import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import make_image_dataset
from prunefuse_hf.constants import POOL_INDEX
from prunefuse_hf.data.pool import DataPool


@pytest.fixture
def dataset():
    return make_image_dataset(64, num_classes=4)


@pytest.fixture
def pool(dataset):
    return DataPool(dataset)


def labeled_pool(dataset):
    """Round 1: three random examples; round 2: two scored by a strategy; round 3: one without a score."""
    pool = DataPool(dataset)
    pool.label([40, 7, 21], round=1, strategy="random")
    pool.label([3, 50], round=2, scores=[0.9, 0.4], strategy="entropy")
    pool.label([12], round=3)
    return pool


def test_new_pool_is_all_unlabeled(pool, dataset):
    assert len(pool) == 64
    assert pool.dataset is dataset
    assert pool.rounds.tolist() == [0] * 64
    assert pool.num_labeled == 0 and pool.num_unlabeled == 64
    assert pool.current_round == 0
    assert pool.labeled.num_rows == 0
    assert pool.unlabeled_indices.tolist() == list(range(64))
    assert np.isnan(pool.scores).all()


def test_label_updates_rounds_indices_and_views(dataset):
    pool = labeled_pool(dataset)

    assert pool.labeled_indices.tolist() == [3, 7, 12, 21, 40, 50]
    assert pool.labeled_indices.dtype == np.int64 and pool.unlabeled_indices.dtype == np.int64
    assert pool.unlabeled_indices.tolist() == sorted(set(range(64)) - {3, 7, 12, 21, 40, 50})
    assert pool.rounds[[40, 7, 21, 3, 50, 12, 0]].tolist() == [1, 1, 1, 2, 2, 3, 0]
    assert (pool.num_labeled, pool.num_unlabeled, pool.current_round) == (6, 58, 3)
    assert pool.scores[3] == 0.9 and pool.scores[50] == 0.4 and np.isnan(pool.scores[40])
    assert pool.strategies == {1: "random", 2: "entropy"}
    labels = list(dataset["label"])
    assert list(pool.labeled["label"]) == [labels[i] for i in pool.labeled_indices]
    assert list(pool.unlabeled["label"]) == [labels[i] for i in pool.unlabeled_indices]
    assert np.array_equal(np.asarray(pool.labeled[0]["image"]), np.asarray(dataset[3]["image"]))


def test_views_are_one_select_on_the_base_and_cached(pool, dataset, monkeypatch):
    calls = []
    select = datasets.Dataset.select

    def spy(self, indices, *args, **kwargs):
        calls.append((self is dataset, list(indices)))
        return select(self, indices, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "select", spy)
    pool.label([5, 9], round=1)
    first = pool.labeled
    assert pool.labeled is first  # cached
    assert calls == [(True, [5, 9])]

    pool.label([2], round=2)
    assert pool.labeled is not first  # rebuilt after a change, from the base dataset
    assert pool.labeled.num_rows == 3
    assert calls == [(True, [5, 9]), (True, [2, 5, 9])]
    assert len(pool.unlabeled) == 61
    assert calls[-1] == (True, sorted(set(range(64)) - {2, 5, 9}))


def test_state_arrays_are_read_only(pool):
    pool.label([1], round=1)
    for array in (pool.rounds, pool.scores, pool.labeled_indices, pool.unlabeled_indices):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 7
    assert pool.rounds[1] == 1 and pool.labeled_indices.tolist() == [1]


def test_label_randomly_is_seeded(dataset):
    first = DataPool(dataset).label_randomly(10, seed=3)
    again = DataPool(dataset).label_randomly(10, seed=3)
    other = DataPool(dataset).label_randomly(10, seed=4)

    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
    assert first.tolist() == sorted(first.tolist()) and len(set(first.tolist())) == 10
    assert (
        first.tolist() == np.sort(np.random.default_rng(3).choice(np.arange(64), 10, replace=False)).tolist()
    )


def test_label_randomly_draws_only_unlabeled_and_records_round(pool):
    pool.label(range(0, 60), round=1)
    drawn = pool.label_randomly(3, seed=0, round=2)
    assert set(drawn.tolist()) <= {60, 61, 62, 63}
    assert pool.rounds[drawn].tolist() == [2, 2, 2]
    assert pool.strategies == {2: "random"}


@pytest.mark.parametrize("n", [0, -1, 5])
def test_label_randomly_too_many_or_too_few(pool, n):
    pool.label(range(60), round=1)
    with pytest.raises(
        ValueError, match=rf"Cannot label {n} examples: .* the 4 unlabeled examples left \(pool of 64\)"
    ):
        pool.label_randomly(n, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"indices": [1, 64]}, IndexError, "Pool index 64 is out of range for a pool of 64 examples"),
        ({"indices": [-1]}, IndexError, "Pool index -1 is out of range for a pool of 64 examples"),
        ({"indices": [2, 7]}, ValueError, r"Pool index 7 is already labeled \(round 1\)"),
        ({"indices": [4, 5, 4]}, ValueError, "Pool index 4 appears more than once"),
        (
            {"indices": [4], "round": 0},
            ValueError,
            r"`round` must be an integer >= 1 \(0 means unlabeled\), got 0",
        ),
        ({"indices": [4, 5], "scores": [0.1]}, ValueError, "Got 1 scores for 2 indices"),
        (
            {"indices": [4], "round": 1, "strategy": "margin"},
            ValueError,
            "Round 1 was labeled with strategy 'random'",
        ),
        ({"indices": [1.5]}, ValueError, "must be integers"),
        ({"indices": []}, ValueError, "No pool indices"),
    ],
)
def test_label_errors_change_nothing(pool, kwargs, error, match):
    pool.label([7], round=1, strategy="random")
    before = (pool.rounds.copy(), pool.scores.copy(), pool.strategies)
    kwargs = {"round": 2, **kwargs}
    with pytest.raises(error, match=match):
        pool.label(**kwargs)
    assert np.array_equal(pool.rounds, before[0])
    assert np.array_equal(pool.scores, before[1], equal_nan=True)
    assert pool.strategies == before[2]


def test_selection_table_rows(dataset):
    table = labeled_pool(dataset).selection_table()
    assert isinstance(table, datasets.Dataset)
    rows = table.to_list()
    assert rows == [
        {POOL_INDEX: 7, "round": 1, "score": None, "strategy": "random", "label": None},
        {POOL_INDEX: 21, "round": 1, "score": None, "strategy": "random", "label": None},
        {POOL_INDEX: 40, "round": 1, "score": None, "strategy": "random", "label": None},
        {POOL_INDEX: 3, "round": 2, "score": 0.9, "strategy": "entropy", "label": None},
        {POOL_INDEX: 50, "round": 2, "score": 0.4, "strategy": "entropy", "label": None},
        {POOL_INDEX: 12, "round": 3, "score": None, "strategy": None, "label": None},
    ]
    # The selected subset can be rebuilt from the table alone.
    labels = list(dataset["label"])
    assert list(dataset.select(list(table[POOL_INDEX]))["label"]) == [
        labels[i] for i in [7, 21, 40, 3, 50, 12]
    ]


def test_save_selection_parquet(dataset, tmp_path):
    pool = labeled_pool(dataset)
    path = pool.save_selection(tmp_path / "run" / "selection.parquet")
    table = pq.read_table(path)
    assert table.column_names == [POOL_INDEX, "round", "score", "strategy", "label"]
    assert str(table.schema.field(POOL_INDEX).type) == "int64"
    assert table.to_pydict() == pool.selection_table().to_dict()
    assert table.to_pydict()[POOL_INDEX] == [7, 21, 40, 3, 50, 12]


def test_state_dict_round_trip_through_json(dataset):
    pool = labeled_pool(dataset)
    state = json.loads(json.dumps(pool.state_dict(), allow_nan=False))

    assert state["num_examples"] == 64 and state["fingerprint"] == dataset._fingerprint
    assert state["strategies"] == {"1": "random", "2": "entropy"}
    assert state["scores"][3] == 0.9 and state["scores"][0] is None

    restored = DataPool.from_state_dict(dataset, state)
    assert np.array_equal(restored.rounds, pool.rounds)
    assert np.array_equal(restored.scores, pool.scores, equal_nan=True)
    assert restored.strategies == pool.strategies
    assert restored.labeled_indices.tolist() == pool.labeled_indices.tolist()
    assert restored.selection_table().to_list() == pool.selection_table().to_list()
    # A restored pool keeps going where the saved one stopped.
    assert (
        restored.label_randomly(2, seed=0, round=4).tolist()
        == pool.label_randomly(2, seed=0, round=4).tolist()
    )


def test_load_state_dict_resets_views(dataset):
    pool = DataPool(dataset)
    assert pool.labeled.num_rows == 0
    pool.load_state_dict(labeled_pool(dataset).state_dict())
    assert pool.labeled.num_rows == 6 and pool.current_round == 3


def test_load_state_dict_from_another_dataset(dataset):
    state = labeled_pool(dataset).state_dict()
    other = make_image_dataset(64, num_classes=4, seed=1)
    with pytest.raises(
        ValueError, match=rf"fingerprint '{dataset._fingerprint}'.*fingerprint '{other._fingerprint}'"
    ):
        DataPool(other).load_state_dict(state)
    with pytest.raises(
        ValueError, match="saved for 64 examples .* this dataset has 10 examples.*same dataset, split"
    ):
        DataPool.from_state_dict(dataset.select(range(10)), state)


def test_load_state_dict_malformed(dataset):
    state = labeled_pool(dataset).state_dict()
    state["rounds"] = state["rounds"][:-1]
    with pytest.raises(ValueError, match="expected 64 non-negative rounds and 64 scores, got 63 rounds"):
        DataPool(dataset).load_state_dict(state)


def test_repr_and_scale():
    big = datasets.Dataset.from_dict({"x": np.arange(200_000)})
    pool = DataPool(big)
    pool.label_randomly(1_000, seed=0)
    assert repr(pool) == "DataPool(num_examples=200000, num_labeled=1000, current_round=1)"
    assert pool.unlabeled.num_rows == 199_000
    assert np.isnan(pool.scores).all()


def test_labels_are_kept_per_example_and_shown_in_the_selection(dataset):
    pool = DataPool(dataset)
    drawn = pool.label_randomly(3, seed=0, labels=np.asarray(dataset["label"]))
    pool.label([5, 9], round=2, labels=[1, 0], strategy="entropy")
    assert pool.labels[drawn].tolist() == [dataset[int(i)]["label"] for i in drawn]
    assert pool.labels[[5, 9]].tolist() == [1, 0] and (pool.labels[pool.unlabeled_indices] == -1).all()
    table = pool.selection_table(
        class_names=["a", "b", "c", "d"], references={"image_path": {5: "x/5.png"}}
    ).to_dict()
    assert table["label_name"][-2:] == ["b", "a"] and table["image_path"][-2:] == ["x/5.png", None]
    restored = DataPool.from_state_dict(dataset, json.loads(json.dumps(pool.state_dict())))
    assert np.array_equal(restored.labels, pool.labels)
    with pytest.raises(ValueError, match="Label -1 is not a class id"):
        pool.label([11], round=3, labels=[-1])
    with pytest.raises(ValueError, match="Got 1 labels"):
        pool.label([11, 12], round=3, labels=[0])
