import numpy as np
import pytest
import torch

from prunefuse_hf.selection import get_strategy, normalize_features, train_linear_probe


def separable(n=60, dim=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    features = rng.normal(0, 0.2, (n, dim))
    features[np.arange(n), labels] += 3.0  # class c lives along axis c
    return features.astype(np.float32), labels


def test_the_probe_fits_separable_features_and_is_deterministic():
    features, labels = separable()
    probe = train_linear_probe(features, labels, 3)
    probs = probe.probs(features)
    assert probs.shape == (60, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(60))
    assert (probs.argmax(dim=1).numpy() == labels).all()
    again = train_linear_probe(features, labels, 3)
    assert torch.equal(probe.weight, again.weight) and torch.equal(probe.bias, again.bias)
    assert 0 < probe.iterations <= 200


def test_the_probe_reads_features_on_the_unit_sphere():
    features, labels = separable()
    probe = train_linear_probe(features, labels, 3)
    # Scaling an example does not change its prediction: the head sees L2-normalized features.
    assert torch.allclose(probe.probs(features * 10), probe.probs(features), atol=1e-6)
    assert torch.allclose(normalize_features(features).norm(dim=1), torch.ones(60))


def test_class_balanced_weights_favour_the_rare_class():
    features, labels = separable(n=60)
    keep = (labels != 2) | (np.arange(60) < 6)  # class 2 keeps 2 of its 20 examples
    plain = train_linear_probe(features[keep], labels[keep], 3)
    balanced = train_linear_probe(features[keep], labels[keep], 3, class_balanced=True)
    rare = features[labels == 2]
    assert balanced.probs(rare)[:, 2].mean() > plain.probs(rare)[:, 2].mean()


def test_its_probabilities_and_features_feed_the_strategies():
    features, labels = separable(n=90)
    probe = train_linear_probe(features[:30], labels[:30], 3)
    candidates = np.arange(30, 90)
    probs = probe.probs(features[30:])
    picked = get_strategy("least_confidence").select(5, pool_indices=candidates, probs=probs)
    expected = candidates[np.lexsort((candidates, probs.max(dim=1).values.double().numpy()))[:5]]
    assert picked.indices.tolist() == expected.tolist()
    badge = get_strategy("badge").select(5, pool_indices=candidates, probs=probs,
                                         features=normalize_features(features[30:]), seed=0)  # fmt: skip
    assert len(set(badge.indices.tolist())) == 5


def test_bad_labels_are_refused():
    features, labels = separable()
    with pytest.raises(
        ValueError, match=r"Need as many labels as feature rows \(at least one\), got 59 and 60"
    ):
        train_linear_probe(features, labels[:-1], 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\), got values from 0 to 2"):
        train_linear_probe(features, labels, 2)
