"""The two training methods as objects the trainer picks once: what a step's loss is, and how the EM step
turns extracted features into per-sample clean confidences.

``TCL`` is spec sections 2-3; ``CrossEntropy`` is the baseline (the weak view, the given labels, and the
same GMM on -p(given label) as its noise detector).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import detector
from .objective import TCLWeights, ce_loss, mixup, tcl_loss

Gather = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Detection:
    confidences: torch.Tensor                 # [N] posterior that each given label is clean
    prototypes: torch.Tensor | None = None    # [C, d] (TCL only)
    assignments: torch.Tensor | None = None   # [N, C] (TCL only)


@dataclass
class StepInputs:
    images: torch.Tensor | tuple  # uint8 batch on the training device, or its views made by the loader
    labels: torch.Tensor        # the given labels of the batch
    confidences: torch.Tensor   # the last EM step's confidences of the batch
    prototypes: torch.Tensor    # the last EM step's prototypes
    scale1: float
    scale2: float
    warmup: bool


class TCL:
    name = "tcl"
    uses_projector = True

    def __init__(self, tcl_cfg, gather: Gather | None):
        self.cfg = tcl_cfg
        self.weights = TCLWeights(tcl_cfg.lambda_con, tcl_cfg.lambda_cls, tcl_cfg.lambda_align, tcl_cfg.lambda_ent,
                                  tcl_cfg.lambda_ne)
        self.gather = gather

    def step_terms(self, model, views, batch: StepInputs) -> dict[str, torch.Tensor]:
        x_w, x_q, x_k = views.three(batch.images)
        x_mix, perm, lam = mixup(torch.cat([x_w, x_q, x_k]), self.cfg.mixup_alpha)
        b = x_w.shape[0]
        # One pass over all six parts keeps batch-norm statistics shared, as in the reference.
        z, logits = model(torch.cat([x_w, x_mix, x_q, x_k]))
        _, z_mix, z_q, z_k = z.split([b, 3 * b, b, b])
        _, logits_mix, logits_q, logits_k = logits.split([b, 3 * b, b, b])
        return tcl_loss(z_q, z_k, z_mix, logits_q, logits_k, logits_mix, labels=batch.labels,
                        confidences=batch.confidences, prototypes=batch.prototypes, lam=lam, perm=perm,
                        scale1=batch.scale1, scale2=batch.scale2, warmup=batch.warmup,
                        temperature=self.cfg.temperature, weights=self.weights, gather=self.gather)

    def detect(self, z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor) -> Detection:
        em = detector.em_step(z, p, labels, self.cfg.temperature, self.cfg.per_class_gmm)
        return Detection(em.confidences, em.prototypes, em.assignments)


class CrossEntropy:
    name = "ce"
    uses_projector = False

    def __init__(self, tcl_cfg):
        self.per_class_gmm = tcl_cfg.per_class_gmm

    def step_terms(self, model, views, batch: StepInputs) -> dict[str, torch.Tensor]:
        _, logits = model(views.weak(batch.images))
        return ce_loss(logits, batch.labels)

    def detect(self, z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor) -> Detection:
        return Detection(detector.prediction_confidences(p, labels, self.per_class_gmm))


def create_method(cfg, gather: Gather | None) -> TCL | CrossEntropy:
    """The method of ``cfg.method``; ``gather`` joins every process's projections for the contrastive loss."""
    return TCL(cfg.tcl, gather) if cfg.method == "tcl" else CrossEntropy(cfg.tcl)
