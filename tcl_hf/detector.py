"""TCL's label-noise detector: the EM step of spec section 2 on already-extracted features.

Input: normalized projections z [N, d], class probabilities p [N, C], given labels y [N].
Output: prototypes, soft assignments and per-sample confidences that the label is clean, from a
two-component 1-D Gaussian mixture on the alignment scores.

The mixture is fitted in torch on the scores' device, for all classes at once (``fit_gmm2_batched``),
reproducing scikit-learn's ``GaussianMixture(n_components=2, random_state=0)``: the same k-means++
draws and Lloyd iterations for the initial responsibilities, then the same EM updates and stopping
rule. ``backend="sklearn"`` fits scikit-learn itself, class by class on the CPU (the reference).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture

from .errors import TCLError

Backend = Literal["torch", "sklearn"]

# scikit-learn's defaults for GaussianMixture (tol, max_iter, reg_covar) and for the KMeans it
# initialises from (tol relative to the data's variance, max_iter).
GMM_TOL, GMM_MAX_ITER, GMM_REG_COVAR = 1e-3, 100, 1e-6
KMEANS_TOL, KMEANS_MAX_ITER = 1e-4, 300
# Spec 2.5: random_state=0.
GMM_SEED = 0
# Iterations between the host syncs that ask whether every class has stopped: a class that stopped
# is frozen at once, so checking less often only costs a few idle iterations, never changes a result.
SYNC_EVERY = 3
# A label counts as clean when its confidence is above this and is flagged noisy below it (spec 2.6).
CLEAN_THRESHOLD = 0.5


@dataclass
class EMResult:
    prototypes: torch.Tensor   # [C, d] unit vectors
    assignments: torch.Tensor  # [N, C] soft cluster assignments gamma
    confidences: torch.Tensor  # [N] posterior that the given label is clean
    clean_ratio: float         # fraction of samples with confidence > CLEAN_THRESHOLD


def class_prototypes(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """M-step with predictions injected: mu_k = normalize(sum_i p_ik z_i)."""
    return F.normalize(p.float().T @ z.float(), dim=1)


def soft_assignments(z: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """E-step: gamma_ik = softmax_k(z_i . mu_k / T)."""
    return F.softmax(z.float() @ prototypes.float().T / temperature, dim=1)


# ----------------------------------------------------------------------------------------------
# Two-component 1-D Gaussian mixture, batched over groups (rows of a padded [G, n] tensor).


def fit_gmm2_batched(values: torch.Tensor, mask: torch.Tensor, seed: int = GMM_SEED) -> torch.Tensor:
    """Posterior of the lower-mean component of a 2-component GMM fitted to each row of ``values``.

    values [G, n] float64; mask [G, n] bool, each row's samples first (in the order scikit-learn
    would see them: k-means++ picks its first centre by position), then padding. Each row is fitted
    on its own, as ``GaussianMixture(n_components=2, random_state=seed).fit(row[mask])`` would:
    padding never enters a sum, and a row's result does not depend on the other rows. Every row needs
    at least two distinct values (callers filter degenerate rows). Returns [G, n] float64, 0 at padding.
    """
    values = torch.where(mask, values, 0.0)  # whatever the padding holds (even NaN) stays out of every sum
    count = mask.sum(dim=1).to(values.dtype)
    labels = kmeans2(values, mask, count, seed)
    resp = torch.stack([~labels, labels], dim=1).to(values.dtype)
    weights, means, variances = _gmm_em(values, mask, count, resp)
    resp, _ = _e_step(values, mask, count, weights, means, variances)
    low = means.argmin(dim=1).view(-1, 1, 1).expand(-1, 1, values.shape[1])
    return torch.where(mask, resp.gather(1, low).squeeze(1), 0.0)


def kmeans2(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor, seed: int) -> torch.Tensor:
    """scikit-learn's ``KMeans(n_clusters=2, n_init=1, random_state=seed)`` labels per row, as bool
    [G, n] (True: the cluster of the second k-means++ centre).

    Like scikit-learn it works on mean-centred values with distances written as c^2 - 2xc, so that a
    sample exactly at the midpoint of the two centres (quantised scores) usually falls on the same
    side; the rounding of scikit-learn's own sums cannot be reproduced bit for bit.
    """
    centred = values - (_masked_sum(values, mask) / count)[:, None]
    centres = _kmeans_plusplus(centred, mask, count, seed)
    tol = KMEANS_TOL * _masked_sum(centred ** 2, mask) / count
    return _lloyd(centred, mask, centres, tol)


def _kmeans_plusplus(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor, seed: int) -> torch.Tensor:
    """The two k-means++ centres [G, 2] that scikit-learn picks for 2 clusters with n_local_trials=2.

    scikit-learn draws from a fresh ``RandomState(seed)``: one uniform for the first centre
    (``choice(n, p=uniform)`` is sample floor(u * n)), then two uniforms scaled by the potential,
    each located in the cumulative squared distances to the first centre (in sample order). These
    draws do not depend on the data, so the same three numbers serve every row.
    """
    u_first, *u_second = np.random.RandomState(seed).random_sample(3).tolist()
    last = (count - 1).long()
    first = torch.minimum((u_first * count).floor().long(), last)
    centre0 = values.gather(1, first[:, None])
    closest = torch.where(mask, (values - centre0) ** 2, 0.0)
    targets = closest.sum(dim=1, keepdim=True) * values.new_tensor(u_second)
    # Padding adds 0 to the cumulative sums, so a search can land on it only through rounding; like
    # scikit-learn, clip that to the last sample.
    candidates = torch.minimum(torch.searchsorted(closest.cumsum(dim=1), targets), last[:, None])
    candidate_values = values.gather(1, candidates)
    to_candidate = (values[:, None, :] - candidate_values[:, :, None]) ** 2
    potentials = torch.where(mask[:, None, :], torch.minimum(closest[:, None, :], to_candidate), 0.0).sum(dim=2)
    centre1 = candidate_values.gather(1, potentials.argmin(dim=1, keepdim=True))
    return torch.cat([centre0, centre1], dim=1)


def _lloyd(values: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """scikit-learn's Lloyd loop per row: stop when the labels repeat or the squared centre shift is
    within ``tol``; return the labels of the nearest final centre."""
    active = torch.ones(values.shape[0], dtype=torch.bool, device=values.device)
    previous = None
    for iteration in range(1, KMEANS_MAX_ITER + 1):
        labels = _nearest_second(values, centres)
        # In 1-D both clusters stay non-empty: the k-means++ centres are distinct samples and each
        # mean has a sample on its side of the midpoint, so no empty-cluster relocation is needed.
        new = torch.stack([_masked_mean(values, mask & ~labels), _masked_mean(values, mask & labels)], dim=1)
        repeated = ((labels == previous) | ~mask).all(dim=1) if previous is not None else torch.zeros_like(active)
        stopped = repeated | (((new - centres) ** 2).sum(dim=1) <= tol)
        centres = torch.where(active[:, None], new, centres)
        previous = labels
        active = active & ~stopped
        if iteration % SYNC_EVERY == 0 and not bool(active.any()):
            break
    return _nearest_second(values, centres)


def _nearest_second(values: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """True where the second centre is strictly nearer (ties go to the first, as scikit-learn's argmin),
    with scikit-learn's distance up to a per-sample constant: ||c||^2 - 2 x.c."""
    distances = centres[:, :, None] ** 2 - 2 * values[:, None, :] * centres[:, :, None]
    return distances[:, 1] < distances[:, 0]


def _gmm_em(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor,
            resp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EM from initial responsibilities resp [G, 2, n]; each row stops, as in scikit-learn, after the
    first iteration whose mean log-likelihood changed by less than GMM_TOL (or after GMM_MAX_ITER),
    keeping that iteration's M-step. Returns weights, means, variances, each [G, 2]."""
    nk, means, variances = _m_step(values, mask, resp)
    weights = nk / count[:, None]  # scikit-learn's initialisation divides by n, later M-steps by sum(nk)
    lower_bound = torch.full_like(count, -math.inf)
    active = torch.ones(values.shape[0], dtype=torch.bool, device=values.device)
    for iteration in range(1, GMM_MAX_ITER + 1):
        resp, mean_log_likelihood = _e_step(values, mask, count, weights, means, variances)
        nk, new_means, new_variances = _m_step(values, mask, resp)
        keep = active[:, None]
        weights = torch.where(keep, nk / nk.sum(dim=1, keepdim=True), weights)
        means = torch.where(keep, new_means, means)
        variances = torch.where(keep, new_variances, variances)
        converged = (mean_log_likelihood - lower_bound).abs() < GMM_TOL
        lower_bound = torch.where(active, mean_log_likelihood, lower_bound)
        active = active & ~converged
        if iteration % SYNC_EVERY == 0 and not bool(active.any()):
            break
    return weights, means, variances


def _m_step(values: torch.Tensor, mask: torch.Tensor,
            resp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft counts (+10 eps, as scikit-learn), means and regularised variances, each [G, 2]."""
    resp = torch.where(mask[:, None, :], resp, 0.0)
    nk = resp.sum(dim=2) + 10 * torch.finfo(values.dtype).eps
    means = torch.einsum("gkn,gn->gk", resp, values) / nk
    squared = (values[:, None, :] - means[:, :, None]) ** 2
    variances = torch.einsum("gkn,gkn->gk", resp, squared) / nk + GMM_REG_COVAR
    return nk, means, variances


def _e_step(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor, weights: torch.Tensor,
            means: torch.Tensor, variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Responsibilities [G, 2, n] and the mean log-likelihood per row [G] (scikit-learn's lower bound)."""
    precision_chol = 1.0 / torch.sqrt(variances)
    y = (values[:, None, :] - means[:, :, None]) * precision_chol[:, :, None]
    # log(w N(x | mu, var)) = log w + log(1/sqrt(var)) - log(2 pi) / 2 - y^2 / 2
    constant = torch.log(weights) + torch.log(precision_chol) - 0.5 * math.log(2 * math.pi)
    weighted = torch.addcmul(constant[:, :, None], y, y, value=-0.5)
    # Two components: with r = exp(-|difference|) <= 1 the responsibilities are 1/(1+r) for the more
    # likely one and r/(1+r) for the other, and log p(x) = max + log1p(r): one exp per sample instead
    # of logsumexp's and the responsibilities' (the float64 exps dominate the CPU time).
    first_likelier = weighted[:, 0] >= weighted[:, 1]
    ratio = torch.exp(-(weighted[:, 0] - weighted[:, 1]).abs())
    likelier, other = 1.0 / (1.0 + ratio), ratio / (1.0 + ratio)
    resp = torch.stack([torch.where(first_likelier, likelier, other), torch.where(first_likelier, other, likelier)], dim=1)
    log_norm = torch.maximum(weighted[:, 0], weighted[:, 1]) + torch.log1p(ratio)
    return resp, _masked_sum(log_norm, mask) / count


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, values, 0.0).sum(dim=1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_sum(values, mask) / mask.sum(dim=1)


def sklearn_clean_posterior(values: np.ndarray, seed: int = GMM_SEED) -> np.ndarray:
    """The reference: scikit-learn's GMM on one set of scores, posterior of the lower-mean component."""
    x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, random_state=seed).fit(x)
    return gmm.predict_proba(x)[:, int(np.argmin(gmm.means_.ravel()))]


# ----------------------------------------------------------------------------------------------
# Scores -> confidences: normalisation, grouping by class, degenerate groups.


def group_slots(groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, int]:
    """Column of every sample in a [num_groups, width] layout with one row per group, samples kept in
    their original order within a row (k-means++ picks its first centre by position)."""
    order = torch.argsort(groups, stable=True)
    counts = torch.bincount(groups, minlength=num_groups)
    starts = counts.cumsum(0) - counts
    columns = torch.empty_like(groups)
    columns[order] = torch.arange(len(groups), device=groups.device) - starts[groups[order]]
    return columns, int(counts.max())


def group_posteriors(values: torch.Tensor, groups: torch.Tensor, num_groups: int, seed: int = GMM_SEED,
                     backend: Backend = "torch") -> torch.Tensor:
    """Clean posterior of every sample from one GMM per group; groups with fewer than two samples or
    flat scores carry no evidence of noise and are called clean. values float64 [N], groups long [N]."""
    columns, width = group_slots(groups, num_groups)
    padded = values.new_zeros(num_groups, width)
    padded[groups, columns] = values
    mask = torch.zeros_like(padded, dtype=torch.bool)
    mask[groups, columns] = True
    fit = (mask.sum(dim=1) >= 2) & ~_flat_rows(padded, mask)
    posterior = torch.ones_like(padded)
    if backend == "torch":
        if bool(fit.any()):
            posterior[fit] = fit_gmm2_batched(padded[fit], mask[fit], seed)
    elif backend == "sklearn":
        for row in fit.nonzero().flatten().tolist():
            n = int(mask[row].sum())
            reference = sklearn_clean_posterior(padded[row, :n].cpu().numpy(), seed)
            posterior[row, :n] = torch.from_numpy(reference).to(posterior.device)
    else:
        raise ValueError(f"unknown GMM backend {backend!r}; use 'torch' or 'sklearn'")
    return posterior[groups, columns]


def _flat_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """True for rows whose scores differ by no more than float32 rounding: stretching that to [0, 1]
    would fit the GMM to noise that changes with thread count (an untrained model scores every
    sample ~1/C)."""
    high = torch.where(mask, values, -math.inf).amax(dim=1)
    low = torch.where(mask, values, math.inf).amin(dim=1)
    scale = torch.where(mask, values.abs(), 0.0).amax(dim=1).clamp(min=1.0)
    return high - low <= 1e-6 * scale


def _finite_scores(scores: torch.Tensor) -> torch.Tensor:
    """The scores as float64, or one clear line instead of an error from deep inside the fit."""
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise TCLError(f"EM step: {bad} of {scores.numel()} noise scores are not finite (the model's outputs "
                       "are NaN/inf; training diverged?); lower the learning rate or resume from an earlier checkpoint")
    return scores.double()


def clean_posterior(scores: torch.Tensor, seed: int = GMM_SEED, backend: Backend = "torch") -> torch.Tensor:
    """Posterior of the lower-mean component of a 2-component 1-D GMM fitted to ``scores`` (float64,
    on the scores' device). Degenerate inputs (fewer than two samples or a single distinct value)
    carry no evidence of noise, so every sample is called clean."""
    values = _finite_scores(scores.reshape(-1))
    if values.numel() < 2:
        return torch.ones_like(values)
    return group_posteriors(values, torch.zeros_like(values, dtype=torch.long), 1, seed, backend)


def confidences_from_scores(scores: torch.Tensor, labels: torch.Tensor, per_class: bool, num_classes: int,
                            backend: Backend = "torch") -> torch.Tensor:
    """Min-max normalize the noise scores over all samples, then fit one GMM globally or per given
    class. Returns float64 confidences on the scores' device."""
    values = _finite_scores(scores)
    if values.numel() < 2 or bool(_flat_rows(values[None], torch.ones_like(values[None], dtype=torch.bool))):
        return torch.ones_like(values)
    normalized = (values - values.min()) / (values.max() - values.min())
    groups = labels.to(values.device) if per_class else torch.zeros_like(values, dtype=torch.long)
    return group_posteriors(normalized, groups, num_classes if per_class else 1, GMM_SEED, backend)


def em_step(z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor, temperature: float,
            per_class: bool = False, backend: Backend = "torch") -> EMResult:
    """Prototypes from predictions, assignments, and per-sample clean confidences (spec 2.2-2.6)."""
    prototypes = class_prototypes(z, p)
    gamma = soft_assignments(z, prototypes, temperature)
    # A sample whose own label's cluster barely claims it is likely mislabelled.
    scores = -gamma.gather(1, labels.view(-1, 1)).squeeze(1)
    conf = confidences_from_scores(scores, labels, per_class, p.shape[1], backend).float()
    return EMResult(prototypes, gamma, conf, float((conf > CLEAN_THRESHOLD).float().mean()))


def prediction_confidences(p: torch.Tensor, labels: torch.Tensor, per_class: bool = False,
                           backend: Backend = "torch") -> torch.Tensor:
    """Detector for the CE baseline: the same GMM on -p(given label), i.e. small-loss style."""
    scores = -p.float().gather(1, labels.view(-1, 1)).squeeze(1)
    return confidences_from_scores(scores, labels, per_class, p.shape[1], backend).float()



def suspicion(alignment: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How suspect each given label is, to rank the label report (higher = more suspect): one minus the given
    label's share of ``alignment`` [N, C] — TCL's soft assignments gamma, or the classifier's probabilities p for the
    detectors on p. It is the score the clean posterior is fitted to (min-max scaled there), so it keeps the
    detector's order, but it stays continuous where the posterior saturates at 0 or 1 (bench/suspicion_score.py)."""
    return 1.0 - alignment.float().gather(1, labels.view(-1, 1).to(alignment.device)).squeeze(1)
