"""The EM step of spec section 2: prototypes and assignments by hand, the GMM against scikit-learn,
and detection of planted label noise on a synthetic feature mixture."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from tcl_hf.detector import (class_prototypes, clean_posterior, confidences_from_scores, em_step,
                             prediction_confidences, soft_assignments)

Z = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
P = [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]


def hand_prototypes():
    # mu_0 = 0.9 (1,0) + 0.2 (0,1) + 0.5 (0.6,0.8) = (1.2, 0.6)
    # mu_1 = 0.1 (1,0) + 0.8 (0,1) + 0.5 (0.6,0.8) = (0.4, 1.2)
    n0, n1 = math.sqrt(1.2 ** 2 + 0.6 ** 2), math.sqrt(0.4 ** 2 + 1.2 ** 2)
    return [[1.2 / n0, 0.6 / n0], [0.4 / n1, 1.2 / n1]]


def test_class_prototypes_by_hand():
    got = class_prototypes(torch.tensor(Z), torch.tensor(P))
    assert torch.allclose(got, torch.tensor(hand_prototypes()), atol=1e-6)


def test_soft_assignments_by_hand():
    temperature = 0.25
    mu = hand_prototypes()
    expected = []
    for z in Z:
        e = [math.exp((z[0] * m[0] + z[1] * m[1]) / temperature) for m in mu]
        expected.append([v / sum(e) for v in e])
    got = soft_assignments(torch.tensor(Z), torch.tensor(mu), temperature)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def two_cluster_scores(n_low=300, n_high=120, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.2, 0.05, n_low), rng.normal(0.7, 0.1, n_high)])


def sklearn_low_mean_posterior(x):
    gmm = GaussianMixture(n_components=2, random_state=0).fit(np.asarray(x, dtype=np.float64).reshape(-1, 1))
    return gmm.predict_proba(np.asarray(x).reshape(-1, 1))[:, int(np.argmin(gmm.means_.ravel()))]


def test_clean_posterior_matches_sklearn_low_mean_component():
    scores = two_cluster_scores()
    got = clean_posterior(scores)
    np.testing.assert_allclose(got, sklearn_low_mean_posterior(scores), atol=1e-3)
    # The low-score (clean) cluster is the one called clean, whatever order sklearn stores it in.
    assert got[:300].mean() > 0.95 and got[300:].mean() < 0.05


def test_clean_posterior_picks_the_low_component_when_it_is_the_small_one():
    scores = 1.0 - two_cluster_scores()  # now the small cluster has the low mean
    got = clean_posterior(scores)
    assert got[300:].mean() > 0.95 and got[:300].mean() < 0.05


def test_scores_are_min_max_normalized_before_the_gmm():
    # On a span of 1e-4 the GMM's variance floor (reg_covar 1e-6) would blur the clusters if the
    # scores were not rescaled to [0, 1] first.
    raw = 5.0 + 1e-4 * two_cluster_scores()
    normalized = (raw - raw.min()) / (raw.max() - raw.min())
    got = confidences_from_scores(raw, np.zeros(len(raw), dtype=np.int64), per_class=False, num_classes=1)
    np.testing.assert_allclose(got, sklearn_low_mean_posterior(normalized), atol=1e-3)
    assert np.abs(sklearn_low_mean_posterior(raw) - got).max() > 0.1


def test_per_class_mode_fits_one_gmm_per_given_label_on_globally_normalized_scores():
    rng = np.random.default_rng(1)
    a = two_cluster_scores(200, 60, seed=2)           # class 0
    b = 3.0 + 2.0 * two_cluster_scores(150, 90, seed=3)  # class 1, on another scale
    raw = np.concatenate([a, b])
    labels = np.array([0] * len(a) + [1] * len(b))
    order = rng.permutation(len(raw))
    raw, labels = raw[order], labels[order]
    normalized = (raw - raw.min()) / (raw.max() - raw.min())
    # Class 2 has no samples; class 3 a single one (no evidence: clean).
    labels_with_single = labels.copy()
    labels_with_single[0] = 3
    got = confidences_from_scores(raw, labels_with_single, per_class=True, num_classes=4)
    for k in (0, 1):
        mask = labels_with_single == k
        np.testing.assert_allclose(got[mask], sklearn_low_mean_posterior(normalized[mask]), atol=1e-3)
    assert got[0] == 1.0
    # One global GMM would call most of class 1 noisy (its scores are all high).
    global_fit = confidences_from_scores(raw, labels, per_class=False, num_classes=2)
    assert np.abs(global_fit - got).max() > 0.5


@pytest.mark.parametrize("scores", [np.full(6, 0.3), np.array([0.7])])
def test_degenerate_scores_are_all_clean(scores):
    np.testing.assert_array_equal(clean_posterior(scores), np.ones(len(scores)))
    labels = np.zeros(len(scores), dtype=np.int64)
    np.testing.assert_array_equal(confidences_from_scores(scores, labels, False, 2), np.ones(len(scores)))
    np.testing.assert_array_equal(confidences_from_scores(scores, labels, True, 2), np.ones(len(scores)))


def test_scores_equal_up_to_float32_rounding_are_degenerate():
    """An untrained model assigns every sample ~1/C to every cluster: the scores then differ only by
    float32 rounding (which changes with thread and process count). Min-max scaling must not blow
    that noise up into confident 'noisy' calls."""
    rng = np.random.default_rng(0)
    scores = (np.float32(-0.1) + rng.normal(0.0, 5e-8, 200).astype(np.float32)).astype(np.float32)
    assert 0 < np.ptp(scores) < 1e-6
    labels = np.arange(200) % 10
    np.testing.assert_array_equal(confidences_from_scores(scores, labels, False, 10), np.ones(200))
    np.testing.assert_array_equal(confidences_from_scores(scores, labels, True, 10), np.ones(200))


def planted_noise(n=2000, num_classes=10, dim=16, flip=0.3, seed=0):
    """Features around random unit class centres, 30 % of the labels flipped to another class, and a
    classifier p that predicts the true class from the features."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=gen), dim=1)
    true = torch.randint(0, num_classes, (n,), generator=gen)
    z = torch.nn.functional.normalize(centres[true] + 0.15 * torch.randn(n, dim, generator=gen), dim=1)
    given = true.clone()
    flipped = torch.randperm(n, generator=gen)[: int(flip * n)]
    given[flipped] = (true[flipped] + torch.randint(1, num_classes, (len(flipped),), generator=gen)) % num_classes
    p = torch.softmax(10.0 * z @ centres.T, dim=1)
    return z, p, given, (given == true).numpy()


@pytest.mark.parametrize("per_class", [False, True])
def test_em_step_finds_planted_noisy_labels(per_class):
    z, p, given, is_clean = planted_noise()
    assert is_clean.mean() == pytest.approx(0.7)
    em = em_step(z, p, given, temperature=0.25, per_class=per_class)
    conf = em.confidences.numpy()
    assert roc_auc_score(is_clean, conf) > 0.95
    assert em.clean_ratio == pytest.approx(float((conf > 0.5).mean()))
    assert em.clean_ratio == pytest.approx(0.7, abs=0.05)
    assert em.prototypes.shape == (10, 16)
    assert torch.allclose(em.prototypes.norm(dim=1), torch.ones(10), atol=1e-5)
    assert torch.allclose(em.assignments.sum(dim=1), torch.ones(len(z)), atol=1e-5)


def test_prediction_confidences_find_planted_noise():
    z, p, given, is_clean = planted_noise(seed=1)
    conf = prediction_confidences(p, given).numpy()
    assert roc_auc_score(is_clean, conf) > 0.95
