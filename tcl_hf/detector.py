"""TCL's label-noise detector: the EM step of spec section 2 on already-extracted features.

Input: normalized projections z [N, d], class probabilities p [N, C], given labels y [N].
Output: prototypes, soft assignments and per-sample confidences that the label is clean, from a
two-component Gaussian mixture (scikit-learn, as the reference) on the alignment scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture


@dataclass
class EMResult:
    prototypes: torch.Tensor   # [C, d] unit vectors
    assignments: torch.Tensor  # [N, C] soft cluster assignments gamma
    confidences: torch.Tensor  # [N] posterior that the given label is clean
    clean_ratio: float         # fraction of samples with confidence > 0.5


def class_prototypes(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """M-step with predictions injected: mu_k = normalize(sum_i p_ik z_i)."""
    return F.normalize(p.float().T @ z.float(), dim=1)


def soft_assignments(z: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """E-step: gamma_ik = softmax_k(z_i . mu_k / T)."""
    return F.softmax(z.float() @ prototypes.float().T / temperature, dim=1)


def clean_posterior(scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """Posterior of the lower-mean component of a 2-component 1-D GMM fitted to ``scores``.

    Degenerate inputs (fewer than two samples or a single distinct value) carry no evidence of
    noise, so every sample is called clean.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    if scores.shape[0] < 2 or _flat(scores):
        return np.ones(scores.shape[0])
    gmm = GaussianMixture(n_components=2, random_state=seed).fit(scores)
    return gmm.predict_proba(scores)[:, int(np.argmin(gmm.means_.ravel()))]


def _flat(scores: np.ndarray) -> bool:
    """True when the scores differ by no more than float32 rounding: stretching that to [0, 1] would
    fit the GMM to noise that changes with thread count (an untrained model scores every sample ~1/C)."""
    return float(np.ptp(scores)) <= 1e-6 * max(1.0, float(np.abs(scores).max()))


def confidences_from_scores(scores: np.ndarray, labels: np.ndarray, per_class: bool, num_classes: int) -> np.ndarray:
    """Min-max normalize the noise scores over all samples, then fit one GMM globally or per given class."""
    scores = np.asarray(scores, dtype=np.float64)
    if _flat(scores):
        return np.ones_like(scores)
    normalized = (scores - scores.min()) / (scores.max() - scores.min())
    if not per_class:
        return clean_posterior(normalized)
    conf = np.ones_like(normalized)
    for k in range(num_classes):
        mask = labels == k
        if mask.any():
            conf[mask] = clean_posterior(normalized[mask])
    return conf


def em_step(z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor, temperature: float,
            per_class: bool = False) -> EMResult:
    """Prototypes from predictions, assignments, and per-sample clean confidences (spec 2.2-2.6)."""
    prototypes = class_prototypes(z, p)
    gamma = soft_assignments(z, prototypes, temperature)
    # A sample whose own label's cluster barely claims it is likely mislabelled.
    scores = -gamma.gather(1, labels.view(-1, 1)).squeeze(1)
    conf = confidences_from_scores(scores.cpu().numpy(), labels.cpu().numpy(), per_class, p.shape[1])
    conf_t = torch.from_numpy(conf).float().to(z.device)
    return EMResult(prototypes, gamma, conf_t, float((conf_t > 0.5).float().mean()))


def prediction_confidences(p: torch.Tensor, labels: torch.Tensor, per_class: bool = False) -> torch.Tensor:
    """Detector for the CE baseline: the same GMM on -p(given label), i.e. small-loss style."""
    scores = -p.float().gather(1, labels.view(-1, 1)).squeeze(1)
    conf = confidences_from_scores(scores.cpu().numpy(), labels.cpu().numpy(), per_class, p.shape[1])
    return torch.from_numpy(conf).float().to(p.device)
