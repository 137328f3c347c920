"""Detector building blocks on inputs whose answer is known."""
import numpy as np
import pytest

from paddle_suite.backdoor import detectors


def test_roc_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = rng.integers(0, 8, 300).astype(float) + labels  # ties on purpose
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert detectors.roc_auc(labels, scores) == pytest.approx(pairs)
    assert np.isnan(detectors.roc_auc(np.ones(3), [1, 2, 3]))


def test_mad_anomaly_index_flags_the_small_outlier():
    norms = np.array([100.0, 104, 96, 101, 99, 103, 97, 20])
    index = detectors.mad_anomaly_index(norms)
    assert np.argmax(index) == 7 and index[7] > 2 and np.all(index[:7] < 2)


def test_strip_separates_an_input_that_ignores_overlays():
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 200, size=(50, 8, 8, 1), dtype=np.int64).astype(np.uint8)

    def predict(images):  # a "backdoored" classifier: a bright top-left pixel (> 100) forces class 0
        flat = images.reshape(len(images), -1).astype(float)
        logits = np.stack([flat[:, :4].mean(1) / 8, flat[:, 4:8].mean(1) / 8, flat[:, 8:12].mean(1) / 8], 1)
        logits[images[:, 0, 0, 0] > 100, 0] += 50
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    clean = pool[:20]
    triggered = clean.copy()
    triggered[:, 0, 0, 0] = 255
    pool[:, 0, 0, 0] = 0  # a superimposed trigger pixel averages to 128 (still on), a clean one to <= 100
    auroc, h_clean, h_trig = detectors.strip_auroc(predict, clean, triggered, pool, n_overlays=8)
    assert auroc > 0.95 and h_trig.mean() < h_clean.mean()


def test_spectral_signature_finds_a_small_shifted_cluster():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((500, 16))
    poisoned = np.zeros(500, bool)
    poisoned[:40] = True
    features[poisoned] += 4 * np.eye(16)[3]
    result = detectors.spectral_signature(features, poisoned)
    assert result["auroc"] > 0.95 and result["recall"] > 0.9
