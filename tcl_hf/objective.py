"""TCL's training objective (spec section 3) and the cross-entropy baseline, as pure tensor functions.

Everything here takes tensors and returns tensors: no model, no optimizer, no global state, so each
term can be checked by hand on tiny inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE(logits, target) = -mean_i sum_k target_ik log_softmax(logits)_ik."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def info_nce(z_q: torch.Tensor, z_k: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2B anchors: each view's positive is the other view of the same image,
    its negatives the remaining 2B-2 views; mean over anchors."""
    z = torch.cat([z_q, z_k]).float()
    n = z_q.shape[0]
    sim = z @ z.T / temperature
    # An anchor must not be its own negative.
    sim.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
    return F.cross_entropy(sim, positives)


def entropy_regularizers(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_ent, L_ne): mean per-sample entropy (pushes confident predictions) and
    sum_k Pbar_k log Pbar_k of the batch-mean prediction (pushes balanced predictions)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    ent = -(p * log_p).sum(dim=1).mean()
    p_bar = p.mean(dim=0)
    ne = (p_bar * torch.log(p_bar.clamp_min(1e-12))).sum()
    return ent, ne


def blend(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mix(a, b, t) = (1 - t) a + t b, with t broadcast per row."""
    return (1 - t) * a + t * b


def mixup(x: torch.Tensor, alpha: float, generator: torch.Generator | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One lambda ~ Beta(alpha, alpha) folded to >= 0.5 and one permutation for the whole batch.

    Returns (mixed x, permutation, lambda). Drawn from torch's RNG so a checkpoint's RNG state
    reproduces it on resume.
    """
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    lam = float(beta.sample())
    lam = max(lam, 1.0 - lam)
    # Drawn on the images' device: nothing crosses from the host per step.
    perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
    return lam * x + (1 - lam) * x[perm], perm, lam


@dataclass(frozen=True)
class TCLWeights:
    con: float = 1.0
    cls: float = 1.0
    align: float = 1.0
    ent: float = 1.0
    ne: float = 1.0


def tcl_loss(
    z_q: torch.Tensor, z_k: torch.Tensor, z_mix: torch.Tensor,
    logits_q: torch.Tensor, logits_k: torch.Tensor, logits_mix: torch.Tensor,
    labels: torch.Tensor, confidences: torch.Tensor, prototypes: torch.Tensor,
    lam: float, perm: torch.Tensor, scale1: float, scale2: float, warmup: bool,
    temperature: float, weights: TCLWeights = TCLWeights(),
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """All TCL loss terms for one batch of B images (3B mixed rows); returns each term and `loss`.

    ``gather`` (several processes) concatenates z from every process with gradients, so the
    contrastive loss sees all negatives.
    """
    num_classes = logits_q.shape[1]
    zq_all, zk_all = (gather(z_q), gather(z_k)) if gather is not None else (z_q, z_k)
    con = info_nce(zq_all, zk_all, temperature)

    with torch.no_grad():
        y = F.one_hot(labels, num_classes).float()
        w = confidences.float().unsqueeze(1)
        p_q = F.softmax(logits_q.float(), dim=1)
        p_k = F.softmax(logits_k.float(), dim=1)
        repeats = logits_mix.shape[0] // logits_q.shape[0]
        if warmup:
            target_q, target_k = y, y
            target_mix = y.repeat(repeats, 1)
        else:
            # Cross-supervision: each view learns from the other's prediction, pulled to the label by w.
            target_q = blend(p_k, y, w * scale1)
            target_k = blend(p_q, y, w * scale1)
            target_mix = blend((p_q + p_k) / 2, y, w * scale2).repeat(repeats, 1)
        target_mix = lam * target_mix + (1 - lam) * target_mix[perm]

    cls = (soft_cross_entropy(logits_q, target_q) + soft_cross_entropy(logits_k, target_k)
           + soft_cross_entropy(logits_mix, target_mix))
    align = soft_cross_entropy(z_mix.float() @ prototypes.float().T / temperature, target_mix)
    ent, ne = entropy_regularizers(torch.cat([logits_q, logits_k, logits_mix]))
    total = weights.con * con + weights.cls * cls + weights.align * align + weights.ent * ent + weights.ne * ne
    return {"loss": total, "loss_con": con, "loss_cls": cls, "loss_align": align, "loss_ent": ent, "loss_ne": ne}


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The baseline: plain cross-entropy with the given (noisy) labels."""
    loss = F.cross_entropy(logits.float(), labels)
    return {"loss": loss, "loss_cls": loss}
