"""The EM step of spec section 2: prototypes and assignments by hand, the GMM against scikit-learn,
and detection of planted label noise on a synthetic feature mixture."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from tcl_hf import detector
from tcl_hf.detector import (class_prototypes, clean_posterior, confidences_from_scores, em_step,
                             fit_gmm2_batched, prediction_confidences, soft_assignments)
from tcl_hf.errors import TCLError

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
    got = clean_posterior(torch.from_numpy(scores))
    np.testing.assert_allclose(got, sklearn_low_mean_posterior(scores), atol=1e-3)
    # The low-score (clean) cluster is the one called clean, whatever order sklearn stores it in.
    assert got[:300].mean() > 0.95 and got[300:].mean() < 0.05


def test_clean_posterior_picks_the_low_component_when_it_is_the_small_one():
    scores = 1.0 - two_cluster_scores()  # now the small cluster has the low mean
    got = clean_posterior(torch.from_numpy(scores))
    assert got[300:].mean() > 0.95 and got[:300].mean() < 0.05


def test_scores_are_min_max_normalized_before_the_gmm():
    # On a span of 1e-4 the GMM's variance floor (reg_covar 1e-6) would blur the clusters if the
    # scores were not rescaled to [0, 1] first.
    raw = 5.0 + 1e-4 * two_cluster_scores()
    normalized = (raw - raw.min()) / (raw.max() - raw.min())
    got = confidences_from_scores(torch.from_numpy(raw), torch.zeros(len(raw), dtype=torch.long), per_class=False,
                                  num_classes=1).numpy()
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
    got = confidences_from_scores(torch.from_numpy(raw), torch.from_numpy(labels_with_single), per_class=True,
                                  num_classes=4).numpy()
    for k in (0, 1):
        mask = labels_with_single == k
        np.testing.assert_allclose(got[mask], sklearn_low_mean_posterior(normalized[mask]), atol=1e-3)
    assert got[0] == 1.0
    # One global GMM would call most of class 1 noisy (its scores are all high).
    global_fit = confidences_from_scores(torch.from_numpy(raw), torch.from_numpy(labels), per_class=False,
                                         num_classes=2).numpy()
    assert np.abs(global_fit - got).max() > 0.5


@pytest.mark.parametrize("scores", [torch.full((6,), 0.3), torch.tensor([0.7])])
def test_degenerate_scores_are_all_clean(scores):
    np.testing.assert_array_equal(clean_posterior(scores), np.ones(len(scores)))
    labels = torch.zeros(len(scores), dtype=torch.long)
    np.testing.assert_array_equal(confidences_from_scores(scores, labels, False, 2), np.ones(len(scores)))
    np.testing.assert_array_equal(confidences_from_scores(scores, labels, True, 2), np.ones(len(scores)))


def test_scores_equal_up_to_float32_rounding_are_degenerate():
    """An untrained model assigns every sample ~1/C to every cluster: the scores then differ only by
    float32 rounding (which changes with thread and process count). Min-max scaling must not blow
    that noise up into confident 'noisy' calls."""
    rng = np.random.default_rng(0)
    scores = (np.float32(-0.1) + rng.normal(0.0, 5e-8, 200).astype(np.float32)).astype(np.float32)
    assert 0 < np.ptp(scores) < 1e-6
    scores, labels = torch.from_numpy(scores), torch.arange(200) % 10
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


# ----------------------------------------------------------------------------------------------
# The torch GMM against scikit-learn's GaussianMixture(n_components=2, random_state=0).


def reference_confidences(scores, labels, per_class, num_classes):
    """The detector as it was: global min-max normalization, then scikit-learn per class (or once);
    classes with fewer than two samples or flat scores are clean."""
    scores = np.asarray(scores, dtype=np.float64)
    normalized = (scores - scores.min()) / (scores.max() - scores.min())
    groups = np.asarray(labels) if per_class else np.zeros(len(scores), dtype=np.int64)
    conf = np.ones_like(normalized)
    for k in range(num_classes if per_class else 1):
        members = groups == k
        if members.sum() >= 2 and np.ptp(normalized[members]) > 1e-6:
            conf[members] = sklearn_low_mean_posterior(normalized[members])
    return conf


def gmm_fixtures():
    rng = np.random.default_rng(7)
    fixtures = {
        "bimodal": np.concatenate([rng.normal(0.3, 0.08, 1500), rng.normal(0.7, 0.1, 700)]),
        "skewed": rng.exponential(0.1, 2000),
        "heavy clean mode, spread noisy mode": np.concatenate([np.abs(rng.normal(0, 0.02, 1800)),
                                                               rng.beta(2, 1.5, 200)]),
        "nearly overlapping": np.concatenate([rng.normal(0.5, 0.1, 1000), rng.normal(0.55, 0.1, 1000)]),
        "one outlier": np.concatenate([rng.normal(0, 1e-3, 999), [1.0]]),
        "two samples": np.array([0.2, 0.9]),
    }
    return {name: rng.permutation(x) for name, x in fixtures.items()}


@pytest.mark.parametrize("name", list(gmm_fixtures()))
def test_torch_gmm_matches_sklearn_on_fixtures(name):
    x = gmm_fixtures()[name]
    got = clean_posterior(torch.from_numpy(x))
    assert got.dtype == torch.float64
    assert np.abs(got.numpy() - sklearn_low_mean_posterior(x)).max() <= 1e-3


def uneven_classes(num_classes, seed):
    """Scores of classes of very different sizes and shapes; class 0 is empty, class 1 has one sample,
    class 2 is flat, and the last class is empty too."""
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for k in range(1, num_classes - 1):
        n = 1 if k == 1 else int(rng.integers(2, 40 if num_classes > 10 else 600))
        if k == 2:
            x = np.full(n + 5, 0.4)
        else:
            noisy = rng.random(n) < rng.uniform(0.1, 0.9)
            x = np.where(noisy, rng.beta(rng.uniform(1, 4), 2, n), np.abs(rng.normal(0, rng.uniform(0.01, 0.2), n)))
        scores.append(x)
        labels.append(np.full(len(x), k))
    order = rng.permutation(sum(len(x) for x in scores))
    return np.concatenate(scores)[order], np.concatenate(labels)[order]


@pytest.mark.parametrize("num_classes", [10, 100])
def test_per_class_torch_gmm_matches_sklearn_on_uneven_classes(num_classes):
    scores, labels = uneven_classes(num_classes, seed=num_classes)
    got = confidences_from_scores(torch.from_numpy(scores), torch.from_numpy(labels), True, num_classes)
    expected = reference_confidences(scores, labels, True, num_classes)
    assert np.abs(got.numpy() - expected).max() <= 1e-3
    assert (got[torch.from_numpy(np.isin(labels, [1, 2]))] == 1).all()  # one sample, flat class


def cifar_like_scores(n=50_000, num_classes=10, noise=0.5, overlap=False, seed=0):
    """Scores shaped like the EM step's -gamma_{i,y} (float32): a large clean mode at -1 (the given
    label's cluster claims the sample) and noisy samples spread towards 0; ``overlap`` makes the two
    modes overlap. Some classes are harder than others."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    noisy = rng.random(n) < noise
    if overlap:
        clean_gamma, noisy_gamma = rng.beta(4, 2, n), rng.beta(2, 3, n)
    else:
        clean_gamma, noisy_gamma = 1 - rng.beta(1, 30, n), rng.beta(0.7, 4, n)
    clean_gamma = clean_gamma * (1 - 0.1 * rng.random(num_classes)[labels])
    gamma = np.where(noisy, noisy_gamma, clean_gamma).astype(np.float32)
    return torch.from_numpy(-gamma), torch.from_numpy(labels)


@pytest.mark.parametrize("per_class,noise,overlap", [(False, 0.2, False), (False, 0.9, True), (True, 0.8, False)])
def test_clean_noisy_decisions_agree_with_sklearn_on_cifar_like_scores(per_class, noise, overlap):
    scores, labels = cifar_like_scores(noise=noise, overlap=overlap)
    got = confidences_from_scores(scores, labels, per_class, 10).numpy()
    expected = reference_confidences(scores.numpy(), labels.numpy(), per_class, 10)
    assert ((got > 0.5) == (expected > 0.5)).mean() >= 0.999
    assert np.abs(got - expected).max() <= 1e-3


def test_batched_fit_equals_each_row_alone():
    """Padding (here NaN) never leaks into another row's fit."""
    rng = np.random.default_rng(3)
    rows = [cifar_like_scores(n, 1, noise, seed=n)[0].double().numpy() for n, noise in
            [(40, 0.3), (3000, 0.6), (2, 0.5), (700, 0.1), (1200, 0.9)]]
    values = torch.full((len(rows), max(map(len, rows))), float("nan"), dtype=torch.float64)
    mask = torch.zeros(values.shape, dtype=torch.bool)
    for g, x in enumerate(rows):
        values[g, :len(x)] = torch.from_numpy(rng.permutation(x))
        mask[g, :len(x)] = True
    together = fit_gmm2_batched(values, mask)
    for g, x in enumerate(rows):
        alone = fit_gmm2_batched(values[g:g + 1, :len(x)], mask[g:g + 1, :len(x)])[0]
        torch.testing.assert_close(together[g, :len(x)], alone, rtol=0, atol=1e-12)
    assert (together[~mask] == 0).all()


def test_per_class_fit_is_one_batched_call_without_sklearn(monkeypatch):
    calls = []
    batched = detector.fit_gmm2_batched

    def counting(values, mask, seed=0):
        calls.append(values.shape[0])
        return batched(values, mask, seed)

    monkeypatch.setattr(detector, "fit_gmm2_batched", counting)
    monkeypatch.setattr(detector, "GaussianMixture", None)  # the torch backend never reaches scikit-learn
    scores, labels = cifar_like_scores(n=5000, num_classes=100)
    confidences_from_scores(scores, labels, True, 100)
    assert calls == [100]


def test_sklearn_backend_is_the_reference_and_agrees_with_torch():
    z, p, given, _ = planted_noise()
    torch_em = em_step(z, p, given, temperature=0.25, per_class=True)
    sklearn_em = em_step(z, p, given, temperature=0.25, per_class=True, backend="sklearn")
    assert torch_em.confidences.dtype == sklearn_em.confidences.dtype == torch.float32
    assert (torch_em.confidences - sklearn_em.confidences).abs().max() <= 1e-3
    scores = -soft_assignments(z, class_prototypes(z, p), 0.25).gather(1, given.view(-1, 1)).squeeze(1)
    np.testing.assert_allclose(confidences_from_scores(scores, given, True, 10, backend="sklearn").numpy(),
                               reference_confidences(scores.numpy(), given.numpy(), True, 10), atol=1e-12)
    with pytest.raises(ValueError, match="backend"):
        confidences_from_scores(scores, given, True, 10, backend="cuml")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_raise_one_line(bad):
    scores = torch.from_numpy(two_cluster_scores())
    scores[[3, 10]] = bad
    labels = torch.zeros(len(scores), dtype=torch.long)
    for call in (lambda: confidences_from_scores(scores, labels, True, 1), lambda: clean_posterior(scores)):
        with pytest.raises(TCLError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and "2 of 420 noise scores are not finite" in message and "diverged" in message


def test_em_step_of_a_diverged_model_raises_one_line():
    z, p, given, _ = planted_noise()
    z[5] = float("nan")
    with pytest.raises(TCLError, match="not finite"):
        em_step(z, p, given, temperature=0.25)
    p[0] = float("nan")
    with pytest.raises(TCLError, match="1 of 2000 noise scores are not finite"):
        prediction_confidences(p, given, per_class=True)


@pytest.mark.parametrize("method", ["tcl", "ce"])
def test_the_gmm_backend_key_reaches_the_em_step(method, monkeypatch):
    from tcl_hf.config import load_config
    from tcl_hf.methods import CrossEntropy, TCL
    fitted = []
    monkeypatch.setattr(detector, "sklearn_clean_posterior",
                        lambda values, seed: fitted.append(len(values)) or np.ones(len(values)))
    monkeypatch.setattr(detector, "fit_gmm2_batched", None)  # the sklearn backend never reaches the torch fit
    tcl_cfg = load_config(None, ["tcl.gmm_backend=sklearn"]).tcl
    z, p, given, _ = planted_noise()
    chosen = TCL(tcl_cfg, None) if method == "tcl" else CrossEntropy(tcl_cfg)
    assert (chosen.detect(z, p, given).confidences == 1).all() and fitted == [len(given)]
