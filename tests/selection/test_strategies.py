import math

import numpy as np
import pytest
import torch

from prunefuse_hf.selection import strategies
from prunefuse_hf.selection.diversity import _uniform_hash
from prunefuse_hf.selection.strategies import (
    STRATEGIES,
    Selection,
    SelectionStrategy,
    UncertaintyStrategy,
    get_strategy,
    register_strategy,
    top_n_by_score,
)

BUILTIN = ["random", "least_confidence", "entropy", "margin", "kcenter_greedy", "cluster_margin"]

# Five candidates given in unsorted pool order. Rows 7 and 1 are permutations of each other, so every
# uncertainty strategy ties them and must put pool index 1 first.
POOL = np.array([7, 3, 9, 1, 4])
PROBS = np.array(
    [
        [0.5, 0.5, 0.0, 0.0],  # pool 7
        [0.4, 0.2, 0.2, 0.2],  # pool 3
        [1.0, 0.0, 0.0, 0.0],  # pool 9
        [0.0, 0.0, 0.5, 0.5],  # pool 1
        [0.7, 0.1, 0.1, 0.1],  # pool 4
    ]
)
H_HALF = math.log(2)
H_FLAT = -(0.4 * math.log(0.4) + 3 * 0.2 * math.log(0.2))
H_PEAKED = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))

EXPECTED = {
    "least_confidence": ([3, 1, 7, 4, 9], [0.6, 0.5, 0.5, 0.3, 0.0]),
    "entropy": ([3, 4, 1, 7, 9], [H_FLAT, H_PEAKED, H_HALF, H_HALF, 0.0]),
    "margin": ([1, 7, 3, 4, 9], [0.0, 0.0, -0.2, -0.6, -1.0]),
}


def random_inputs(num_candidates=50, num_labeled=20, num_classes=5, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        pool_indices=rng.permutation(1000)[:num_candidates],
        probs=rng.dirichlet(np.ones(num_classes), size=num_candidates),
        features=rng.normal(size=(num_candidates, dim)).astype(np.float32),
        labeled_features=rng.normal(size=(num_labeled, dim)).astype(np.float32),
    )


def brute_force_kcenter(pool_indices, features, labeled_features, n):
    """Reference core-set greedy with explicit full distance matrices (fine at test sizes)."""
    order = np.argsort(pool_indices)
    pool_indices, x = pool_indices[order], features[order].astype(np.float64)
    labeled = labeled_features.astype(np.float64)
    pairwise = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    if len(labeled):
        min_dist = np.linalg.norm(x[:, None, :] - labeled[None, :, :], axis=-1).min(axis=1)
    else:
        min_dist = np.full(len(x), np.inf)
    picked, scores = [], []
    for _ in range(n):
        if not len(labeled) and not picked:
            row, score = int(np.argmax(np.linalg.norm(x - x.mean(axis=0), axis=1))), np.inf
        else:
            row = int(np.argmax(np.where(np.isin(np.arange(len(x)), picked), -1.0, min_dist)))
            score = min_dist[row]
        picked.append(row)
        scores.append(score)
        min_dist = np.minimum(min_dist, pairwise[row])
    return pool_indices[picked], np.array(scores)


def assert_valid_selection(selection, pool_indices, n):
    assert isinstance(selection, Selection)
    assert selection.indices.dtype == np.int64
    assert selection.scores.dtype == np.float64
    assert len(selection) == len(selection.scores) == n
    assert len(np.unique(selection.indices)) == n
    assert np.isin(selection.indices, pool_indices).all()
    assert (np.diff(selection.scores) <= 0).all()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_uncertainty_strategies_match_hand_computed_order_and_scores(name):
    expected_indices, expected_scores = EXPECTED[name]

    selection = get_strategy(name).select(5, pool_indices=POOL, probs=PROBS)

    np.testing.assert_array_equal(selection.indices, expected_indices)
    np.testing.assert_allclose(selection.scores, expected_scores, rtol=1e-12, atol=1e-12)
    assert_valid_selection(selection, POOL, 5)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_uncertainty_strategies_take_the_top_of_the_full_ranking(name):
    expected_indices, expected_scores = EXPECTED[name]

    selection = get_strategy(name).select(2, pool_indices=POOL, probs=PROBS)

    np.testing.assert_array_equal(selection.indices, expected_indices[:2])
    np.testing.assert_allclose(selection.scores, expected_scores[:2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_uncertainty_strategies_ignore_candidate_order(name):
    permutation = np.array([4, 2, 0, 3, 1])

    shuffled = get_strategy(name).select(5, pool_indices=POOL[permutation], probs=PROBS[permutation])

    np.testing.assert_array_equal(shuffled.indices, EXPECTED[name][0])


def test_entropy_treats_zero_probabilities_as_zero_contribution():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])

    selection = get_strategy("entropy").select(3, pool_indices=np.arange(3), probs=probs)

    assert np.isfinite(selection.scores).all()
    np.testing.assert_array_equal(selection.indices, [2, 0, 1])
    np.testing.assert_allclose(selection.scores, [H_HALF, 0.0, 0.0])


@pytest.mark.parametrize("name", BUILTIN)
def test_every_strategy_returns_a_valid_deterministic_selection(name):
    inputs = random_inputs()

    first = get_strategy(name).select(10, seed=3, **inputs)
    second = get_strategy(name).select(10, seed=3, **inputs)

    assert_valid_selection(first, inputs["pool_indices"], 10)
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.scores, second.scores)


@pytest.mark.parametrize("name", BUILTIN)
def test_selecting_every_candidate_returns_a_permutation_of_the_pool(name):
    inputs = random_inputs(num_candidates=12)

    selection = get_strategy(name).select(12, seed=0, **inputs)

    np.testing.assert_array_equal(np.sort(selection.indices), np.sort(inputs["pool_indices"]))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_torch_and_numpy_probs_give_the_same_selection(name):
    from_numpy = get_strategy(name).select(3, pool_indices=POOL, probs=PROBS)
    from_torch = get_strategy(name).select(
        3, pool_indices=torch.from_numpy(POOL), probs=torch.tensor(PROBS, requires_grad=True)
    )

    np.testing.assert_array_equal(from_numpy.indices, from_torch.indices)
    np.testing.assert_array_equal(from_numpy.scores, from_torch.scores)


def test_float32_torch_probs_are_accepted():
    selection = get_strategy("least_confidence").select(
        5, pool_indices=POOL, probs=torch.tensor(PROBS, dtype=torch.float32)
    )

    np.testing.assert_array_equal(selection.indices, EXPECTED["least_confidence"][0])


def test_random_is_seeded():
    pool = np.arange(100)
    strategy = get_strategy("random")

    first = strategy.select(10, pool_indices=pool, seed=1)
    again = strategy.select(10, pool_indices=pool, seed=1)
    other = strategy.select(10, pool_indices=pool, seed=2)

    np.testing.assert_array_equal(first.indices, again.indices)
    assert not np.array_equal(first.indices, other.indices)
    np.testing.assert_array_equal(
        strategy.select(10, pool_indices=pool).indices, strategy.select(10, pool_indices=pool, seed=0).indices
    )
    assert ((first.scores >= 0) & (first.scores < 1)).all()


def test_random_depends_on_the_candidate_set_not_its_order():
    pool = np.arange(100, 200)
    shuffled = np.random.default_rng(5).permutation(pool)

    in_order = get_strategy("random").select(20, pool_indices=pool, seed=7)
    out_of_order = get_strategy("random").select(20, pool_indices=shuffled, seed=7)

    np.testing.assert_array_equal(in_order.indices, out_of_order.indices)


# A 4 x 3 rectangle plus an inner point. Pool indices are given out of order.
KC_POOL = np.array([13, 10, 14, 12, 11])
KC_POINTS = {10: (0, 0), 11: (4, 0), 12: (0, 3), 13: (4, 3), 14: (2, 1)}
KC_FEATURES = np.array([KC_POINTS[i] for i in KC_POOL], dtype=np.float32)


@pytest.mark.parametrize("chunk_size", [1, 2, 2048])
def test_kcenter_without_labeled_points_starts_farthest_from_the_mean(chunk_size):
    # Mean (2, 1.4): 12 and 13 tie as farthest -> 12. Then 11 at 5; then 10 and 13 tie at 3 -> 10;
    # then 13 at 3 and the inner point last at sqrt(5).
    strategy = get_strategy("kcenter_greedy", chunk_size=chunk_size)

    selection = strategy.select(5, pool_indices=KC_POOL, features=KC_FEATURES)

    np.testing.assert_array_equal(selection.indices, [12, 11, 10, 13, 14])
    np.testing.assert_allclose(selection.scores, [np.inf, 5.0, 3.0, 3.0, math.sqrt(5)], rtol=1e-6)
    assert_valid_selection(selection, KC_POOL, 5)


@pytest.mark.parametrize("chunk_size", [1, 2, 2048])
def test_kcenter_with_labeled_points(chunk_size):
    # Labeled at the origin, which candidate 10 duplicates: it must come last, with distance 0.
    # 13 is farthest (5); then 11 and 12 tie at 3 -> 11; then 12 at 3; 14 at sqrt(5); 10 at 0.
    strategy = get_strategy("kcenter_greedy", chunk_size=chunk_size)

    selection = strategy.select(
        5, pool_indices=KC_POOL, features=KC_FEATURES, labeled_features=np.zeros((1, 2), dtype=np.float32)
    )

    np.testing.assert_array_equal(selection.indices, [13, 11, 12, 14, 10])
    np.testing.assert_allclose(selection.scores, [5.0, 3.0, 3.0, math.sqrt(5), 0.0], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
@pytest.mark.parametrize("num_labeled", [0, 20])
def test_kcenter_matches_brute_force_reference(seed, chunk_size, num_labeled):
    inputs = random_inputs(num_candidates=40, num_labeled=num_labeled, dim=5, seed=seed)
    del inputs["probs"]
    expected_indices, expected_scores = brute_force_kcenter(n=15, **inputs)

    selection = get_strategy("kcenter_greedy", chunk_size=chunk_size).select(15, **inputs)

    np.testing.assert_array_equal(selection.indices, expected_indices)
    np.testing.assert_allclose(selection.scores, expected_scores, rtol=1e-5)


def test_kcenter_never_picks_a_candidate_twice_when_features_repeat():
    features = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]], dtype=np.float32), 3, axis=0)

    selection = get_strategy("kcenter_greedy").select(6, pool_indices=np.arange(6), features=features)

    np.testing.assert_array_equal(np.sort(selection.indices), np.arange(6))
    np.testing.assert_array_equal(selection.indices[:2], [0, 3])
    np.testing.assert_array_equal(selection.scores[2:], 0.0)


def test_kcenter_accepts_torch_and_numpy_features():
    inputs = random_inputs(seed=4)

    from_numpy = get_strategy("kcenter_greedy").select(
        10,
        pool_indices=inputs["pool_indices"],
        features=inputs["features"],
        labeled_features=inputs["labeled_features"],
    )
    from_torch = get_strategy("kcenter_greedy").select(
        10,
        pool_indices=inputs["pool_indices"],
        features=torch.from_numpy(inputs["features"]).requires_grad_(),
        labeled_features=torch.from_numpy(inputs["labeled_features"]),
    )

    np.testing.assert_array_equal(from_numpy.indices, from_torch.indices)
    np.testing.assert_array_equal(from_numpy.scores, from_torch.scores)


def test_kcenter_with_empty_labeled_features_is_the_same_as_none():
    inputs = random_inputs(seed=6)

    with_none = get_strategy("kcenter_greedy").select(
        5, pool_indices=inputs["pool_indices"], features=inputs["features"]
    )
    with_empty = get_strategy("kcenter_greedy").select(
        5, pool_indices=inputs["pool_indices"], features=inputs["features"], labeled_features=np.zeros((0, 8))
    )

    np.testing.assert_array_equal(with_none.indices, with_empty.indices)


def straightforward_kcenter(pool_indices, features, labeled_features, n):
    """Reference greedy k-center one pick at a time in float64, with no lookahead or matrix products."""
    x, labeled = features.astype(np.float64), labeled_features.astype(np.float64)
    min_dist = np.full(len(x), np.inf)
    for point in labeled:
        min_dist = np.minimum(min_dist, np.linalg.norm(x - point, axis=1))
    picked, scores = [], []
    for _ in range(n):
        value = np.where(np.isin(np.arange(len(x)), picked), -1.0, min_dist)
        row = min(np.flatnonzero(value == value.max()), key=lambda r: pool_indices[r])
        picked.append(row)
        scores.append(value[row])
        min_dist = np.minimum(min_dist, np.linalg.norm(x - x[row], axis=1))
    return pool_indices[picked], np.array(scores)


@pytest.mark.parametrize("lookahead", [1, 2, 5, 64, None])
@pytest.mark.parametrize("in_order", [True, False])
@pytest.mark.parametrize("num_labeled", [0, 6])
def test_kcenter_lookahead_keeps_the_selection_and_ties_by_pool_index(lookahead, in_order, num_labeled):
    # Small integer features: many exact ties, and float32 products are exact, so indices and scores
    # must equal the reference's whatever the lookahead width and the order of the pool indices.
    rng = np.random.default_rng(3)
    features = rng.integers(0, 4, size=(80, 6)).astype(np.float32)
    pool_indices = np.arange(100, 180) if in_order else rng.permutation(1000)[:80]
    labeled = rng.integers(0, 4, size=(num_labeled, 6)).astype(np.float32)
    expected_indices, expected_scores = brute_force_kcenter(pool_indices, features, labeled, n=40)
    strategy = get_strategy("kcenter_greedy", chunk_size=16, lookahead=lookahead)

    selection = strategy.select(40, pool_indices=pool_indices, features=features, labeled_features=labeled)

    np.testing.assert_array_equal(selection.indices, expected_indices)
    np.testing.assert_array_equal(selection.scores, expected_scores)
    assert strategy.last_stats["picks"] == 40
    if lookahead == 1:
        assert strategy.last_stats["refreshes"] == 40  # one product per pick: today's cost


def test_kcenter_matches_a_straightforward_reference_on_a_larger_pool():
    rng = np.random.default_rng(11)
    features = rng.normal(size=(3000, 48)).astype(np.float32)
    labeled = rng.normal(size=(50, 48)).astype(np.float32)
    pool_indices = rng.permutation(10_000)[:3000]
    expected_indices, expected_scores = straightforward_kcenter(pool_indices, features, labeled, n=60)
    strategy = get_strategy("kcenter_greedy", chunk_size=512)

    selection = strategy.select(60, pool_indices=pool_indices, features=features, labeled_features=labeled)

    np.testing.assert_array_equal(selection.indices, expected_indices)
    np.testing.assert_allclose(selection.scores, expected_scores, rtol=1e-5)
    # The lookahead (48 // 5 = 9 centers) saves products: fewer refreshes than picks.
    assert strategy.last_stats["refreshes"] < 60


def test_kcenter_computes_distances_for_its_picks_not_for_the_candidates_they_cover():
    # Features in tight clusters: the farthest candidates are members of a few clusters, and one pick covers the
    # rest of its cluster. Distances are computed for the picks greedy k-center predicts, not for the farthest
    # candidates as such, so nearly every computed column is a pick (the result stays the reference's).
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(200, 32)).astype(np.float32) * 4
    features = centres[rng.integers(0, 200, 4000)] + rng.normal(size=(4000, 32)).astype(np.float32) * 0.3
    features = features.astype(np.float32)
    labeled = features[:20]
    expected_indices, _ = straightforward_kcenter(np.arange(4000), features, labeled, n=150)
    strategy = get_strategy("kcenter_greedy", chunk_size=512, lookahead=32)

    selection = strategy.select(
        150, pool_indices=np.arange(4000), features=features, labeled_features=labeled
    )

    np.testing.assert_array_equal(selection.indices, expected_indices)
    assert strategy.last_stats["columns"] <= 1.25 * 150
    assert strategy.last_stats["refreshes"] < 150 / 4


def test_kcenter_lookahead_must_be_positive():
    with pytest.raises(ValueError, match=r"lookahead must be >= 1 \(or None for automatic\), got 0\."):
        get_strategy("kcenter_greedy", lookahead=0)


def test_top_n_by_score_breaks_ties_by_pool_index():
    selection = top_n_by_score(np.array([0.5, 0.9, 0.5, 0.5]), np.array([7, 3, 1, 4]), 3)

    np.testing.assert_array_equal(selection.indices, [3, 1, 4])
    np.testing.assert_array_equal(selection.scores, [0.9, 0.5, 0.5])


def test_needs_declare_the_required_model_outputs():
    assert STRATEGIES["random"].needs == frozenset()
    for name in EXPECTED:
        assert STRATEGIES[name].needs == frozenset({"probs"})
    assert STRATEGIES["kcenter_greedy"].needs == frozenset({"features"})
    assert set(BUILTIN) <= set(STRATEGIES)


@pytest.mark.parametrize("n", [0, -1])
def test_budget_below_one_is_refused(n):
    with pytest.raises(ValueError, match=f"n={n}"):
        get_strategy("random").select(n, pool_indices=POOL)


@pytest.mark.parametrize("name", BUILTIN)
def test_budget_larger_than_the_pool_is_refused(name):
    with pytest.raises(ValueError, match=r"n=6: budget larger than the unlabeled pool \(5 candidates\)"):
        get_strategy(name).select(6, pool_indices=POOL, probs=PROBS, features=KC_FEATURES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_uncertainty_strategies_refuse_missing_probs(name):
    with pytest.raises(ValueError, match=f"Strategy '{name}' needs probs"):
        get_strategy(name).select(2, pool_indices=POOL, features=KC_FEATURES)


def test_kcenter_refuses_missing_features():
    with pytest.raises(ValueError, match="Strategy 'kcenter_greedy' needs features"):
        get_strategy("kcenter_greedy").select(2, pool_indices=POOL, probs=PROBS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_probs_row_count_must_match_candidates(name):
    with pytest.raises(ValueError, match="probs has 4 rows but there are 5 candidates"):
        get_strategy(name).select(2, pool_indices=POOL, probs=PROBS[:4])


def test_features_row_count_must_match_candidates():
    with pytest.raises(ValueError, match="features has 4 rows but there are 5 candidates"):
        get_strategy("kcenter_greedy").select(2, pool_indices=POOL, features=KC_FEATURES[:4])


def test_labeled_features_dimension_must_match():
    with pytest.raises(ValueError, match="labeled_features has dimension 3 but features has 2"):
        get_strategy("kcenter_greedy").select(
            2, pool_indices=POOL, features=KC_FEATURES, labeled_features=np.zeros((2, 3))
        )


@pytest.mark.parametrize("bad", [np.ones(5), np.ones((5, 2, 2))])
def test_probs_must_be_a_matrix(bad):
    with pytest.raises(ValueError, match="probs must have shape"):
        get_strategy("entropy").select(2, pool_indices=POOL, probs=bad)


def test_logits_are_refused():
    logits = np.log(PROBS + 1e-3) * 3

    with pytest.raises(ValueError, match="Apply a softmax"):
        get_strategy("least_confidence").select(2, pool_indices=POOL, probs=logits)


def test_margin_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        get_strategy("margin").select(2, pool_indices=POOL, probs=np.ones((5, 1)))


def test_nonfinite_features_are_refused():
    features = KC_FEATURES.copy()
    features[0, 0] = np.nan

    with pytest.raises(ValueError, match="features contains NaN"):
        get_strategy("kcenter_greedy").select(2, pool_indices=POOL, features=features)


def test_duplicate_pool_indices_are_refused():
    with pytest.raises(ValueError, match="duplicates"):
        get_strategy("random").select(2, pool_indices=np.array([1, 2, 2]))


def test_non_integer_pool_indices_are_refused():
    with pytest.raises(ValueError, match="1-D array of integers"):
        get_strategy("random").select(2, pool_indices=np.array([1.0, 2.0, 3.0]))


def test_kcenter_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        get_strategy("kcenter_greedy", chunk_size=0)


def test_get_strategy_unknown_name_lists_the_available_ones():
    with pytest.raises(
        ValueError, match="Unknown selection strategy 'badger'. Available: .*entropy.*kcenter_greedy"
    ):
        get_strategy("badger")


def test_register_strategy_adds_a_new_strategy(monkeypatch):
    monkeypatch.setattr(strategies, "STRATEGIES", dict(STRATEGIES))

    @register_strategy
    class MostConfident(UncertaintyStrategy):
        name = "most_confident"

        def compute_scores(self, probs):
            return probs.max(axis=1)

    selection = strategies.get_strategy("most_confident").select(2, pool_indices=POOL, probs=PROBS)

    np.testing.assert_array_equal(selection.indices, [9, 4])
    assert "most_confident" not in STRATEGIES


def test_register_strategy_refuses_a_clashing_or_missing_name(monkeypatch):
    monkeypatch.setattr(strategies, "STRATEGIES", dict(STRATEGIES))

    with pytest.raises(ValueError, match="'entropy' is already registered"):

        @register_strategy
        class OtherEntropy(SelectionStrategy):
            name = "entropy"

    with pytest.raises(ValueError, match="has no `name`"):

        @register_strategy
        class Nameless(SelectionStrategy):
            pass


# -- badge and bald -----------------------------------------------------------------------------


def _badge_reference(n, pool_indices, probs, features, seed, embeddings=None):
    """BADGE with explicit gradient embeddings and distance matrix (small data only)."""
    order = np.argsort(pool_indices, kind="stable")
    pool_indices = pool_indices[order]
    if embeddings is None:
        probs, features = probs[order], features[order]
        residual = probs.copy()
        residual[np.arange(len(probs)), probs.argmax(1)] -= 1
        embeddings = (residual[:, :, None] * features[:, None, :]).reshape(len(probs), -1)
    else:
        embeddings = embeddings[order]
    picked = [int(np.argmax((embeddings**2).sum(1)))]
    while len(picked) < n:
        nearest = ((embeddings[:, None, :] - embeddings[None, picked, :]) ** 2).sum(-1).min(1)
        nearest[picked] = 0
        # The draw ∝ nearest, as an exponential race on the (seed, step, pool index) uniforms.
        race = -np.log(_uniform_hash(seed, len(picked) - 1, pool_indices)) / np.where(
            nearest > 0, nearest, np.nan
        )
        picked.append(int(np.nanargmin(race)))
    return pool_indices[picked]


def test_badge_draws_proportionally_to_the_squared_distance():
    # One candidate far out is picked first; the others sit at squared gradient-embedding distances 1, 4
    # and 9 (times |p − onehot|² = 0.5) from it, so the second pick must follow those weights.
    probs = np.array([[0.5, 0.5]] * 4)
    features = np.array([[10.0], [9.0], [8.0], [7.0]])  # residual ±0.5 on both classes: distance ∝ Δh²
    counts = np.zeros(4)
    for seed in range(3000):
        selection = get_strategy("badge").select(
            2, pool_indices=np.arange(4), probs=probs, features=features, seed=seed
        )
        assert selection.indices[0] == 0
        counts[selection.indices[1]] += 1
    expected = np.array([0, 1, 4, 9]) / 14
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.03)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_badge_matches_explicit_gradient_embeddings(seed):
    rng = np.random.default_rng(seed + 10)
    logits = rng.normal(size=(40, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    features = rng.normal(size=(40, 6))
    pool_indices = rng.permutation(1000)[:40]
    selection = get_strategy("badge").select(
        12, pool_indices=pool_indices, probs=probs, features=features, seed=seed
    )
    expected = _badge_reference(12, pool_indices, probs, features, seed)
    np.testing.assert_array_equal(selection.indices, expected)
    assert len(set(selection.indices.tolist())) == 12
    np.testing.assert_array_equal(selection.scores, np.arange(12, 0, -1))


@pytest.mark.parametrize("seed", [0, 1])
def test_badge_on_given_embeddings_matches_the_explicit_reference(seed):
    # A detector's or segmenter's embedding sums many outer products, so it does not factor: BADGE takes it whole.
    rng = np.random.default_rng(seed + 20)
    embeddings = rng.normal(size=(40, 5, 6)).reshape(40, 30).astype(np.float32)
    pool_indices = rng.permutation(1000)[:40]
    selection = get_strategy("badge").select(12, pool_indices=pool_indices, embeddings=embeddings, seed=seed)
    expected = _badge_reference(12, pool_indices, None, None, seed, embeddings=embeddings.astype(np.float64))
    np.testing.assert_array_equal(selection.indices, expected)
    # Embeddings of rank one give the selection of their two factors.
    logits = rng.normal(size=(40, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    features = rng.normal(size=(40, 6))
    residual = probs.copy()
    residual[np.arange(40), probs.argmax(1)] -= 1
    outer = (residual[:, :, None] * features[:, None, :]).reshape(40, -1)
    given = get_strategy("badge").select(12, pool_indices=pool_indices, embeddings=outer, seed=seed)
    factored = get_strategy("badge").select(
        12, pool_indices=pool_indices, probs=probs, features=features, seed=seed
    )
    np.testing.assert_array_equal(given.indices, factored.indices)


def test_precomputed_per_image_outputs_go_only_to_the_strategies_that_rank_them():
    pool = np.array([4, 5, 6])
    # BALD and cluster_margin rank a task's per-image scores (mutual information, margin) as given.
    assert get_strategy("bald").select(
        2, pool_indices=pool, scores=np.array([0.1, 0.7, 0.3])
    ).indices.tolist() == [
        5,
        6,
    ]
    features = np.array([[0.0], [0.1], [5.0]])
    picked = get_strategy("cluster_margin").select(
        2, pool_indices=pool, scores=np.array([0.9, 0.8, 0.1]), features=features, seed=0
    )
    assert picked.indices.tolist() == [4, 6]  # 5 shares 4's cluster; 6 is the other cluster's most uncertain
    with pytest.raises(ValueError, match="'kcenter_greedy' does not rank precomputed gradient embeddings; the strategies "
                                         "that do: badge"):  # fmt: skip
        get_strategy("kcenter_greedy").select(1, pool_indices=pool, embeddings=np.ones((3, 2)))
    with pytest.raises(ValueError, match="'badge' does not rank precomputed scores; the strategies that do: bald, "
                                         "cluster_margin, entropy"):  # fmt: skip
        get_strategy("badge").select(1, pool_indices=pool, scores=np.ones(3), features=np.ones((3, 2)))
    with pytest.raises(ValueError, match="'cluster_margin' needs features"):
        get_strategy("cluster_margin").select(1, pool_indices=pool, scores=np.ones(3))
    with pytest.raises(ValueError, match="scores has 2 entries but there are 3 candidates"):
        get_strategy("bald").select(1, pool_indices=pool, scores=np.ones(2))


def test_badge_first_pick_is_the_largest_embedding_and_needs_probs_and_features():
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]])
    features = np.array([[1.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    selection = get_strategy("badge").select(
        1, pool_indices=np.array([7, 8, 9]), probs=probs, features=features
    )
    # |p - onehot| * |h|: 0.1414 * 1, 0.7071 * 1, 0.5657 * 5 -> the third candidate
    assert selection.indices.tolist() == [9]
    with pytest.raises(ValueError, match="'badge' needs features"):
        get_strategy("badge").select(1, pool_indices=np.array([7, 8, 9]), probs=probs)


def test_bald_is_the_mutual_information_of_mc_samples():
    confident_everywhere = [[1.0, 0.0], [1.0, 0.0]]  # no disagreement: 0
    disagreeing = [[1.0, 0.0], [0.0, 1.0]]  # mean is uniform, each sample certain: log 2
    uncertain_everywhere = [[0.5, 0.5], [0.5, 0.5]]  # uncertain but agreeing: 0
    mc_probs = np.array([confident_everywhere, disagreeing, uncertain_everywhere])
    selection = get_strategy("bald").select(3, pool_indices=np.array([4, 5, 6]), mc_probs=mc_probs)
    assert selection.indices.tolist() == [5, 4, 6]
    np.testing.assert_allclose(selection.scores, [np.log(2), 0.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="mc_probs must have shape"):
        get_strategy("bald").select(1, pool_indices=np.array([4, 5]), mc_probs=mc_probs)
