"""The training methods as objects the trainer picks once: what a step's loss is, how the EM step turns extracted
features into per-sample clean confidences, and what else a method keeps.

``TCL`` is spec sections 2-3; ``CrossEntropy`` is the baseline (the weak view, the given labels, and the same GMM
on -p(given label) as its noise detector); ``TCLPlus`` is the reference's second stage (spec section 7): mixup
cross-entropy on relabelled samples with a teacher's predictions mixed into the target after a while.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import copy

import torch
import torch.nn.functional as F

from . import detector
from .objective import TCLWeights, ce_loss, mixup, soft_cross_entropy, tcl_loss

if TYPE_CHECKING:
    from .config import Config
    from .views import Views

Gather = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Detection:
    confidences: torch.Tensor                 # [N] posterior that each given label is clean
    suspicion: torch.Tensor                   # [N] the score the posterior was fitted to, continuous (report order)
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


class Method:
    """What every method shares: no extra state, the given labels are what the report calls predicted, the warm-up
    the run's schedule sets.

    Its traits are class attributes, so the run can read them from ``method_class(cfg.method)`` before the model
    and the method exist (the DDP wrapper, the start)."""

    name: ClassVar[str]
    # Its step leaves some parameters without gradients (the projector: only TCL trains it), so DDP must look for them.
    unused_parameters: ClassVar[bool] = True
    # A TCL phase after a warm-up, its targets scaled by the clean-ratio estimate: the schedule decides the automatic
    # switch, the health monitor judges collapse, and the verdict can say it never left warm-up (tcl_hf/verdict.py).
    judged: ClassVar[bool] = False
    # It starts from a finished TCL run (init.from, tcl_hf/plus.py) rather than from a fresh network.
    starts_from_run: ClassVar[bool] = False

    # The labels it trains towards in place of the given ones (TCL+'s relabelling; None: the given labels).
    trained_labels: torch.Tensor | None = None

    def own_warmup_end(self) -> int | None:
        """The last epoch of a warm-up the method sets itself (TCL+: before its teacher corrects the targets); None:
        the run's schedule decides from ``optim`` (``tcl_hf/schedule.py``)."""
        return None

    def lr(self, scheduled: float, peak: float) -> float:
        """The lr of a step whose schedule says ``scheduled``; ``peak`` is the run's (scaled) lr."""
        return scheduled

    def after_step(self, model: torch.nn.Module) -> None:
        """Called after each optimizer step."""

    def sync_processes(self) -> None:
        """Called on every process after an epoch's steps: makes what each process updated on its own identical
        everywhere before the EM step, the evaluation and the outputs read it."""

    def network(self, model: torch.nn.Module) -> torch.nn.Module:
        """The network the EM step, the evaluation and the export use (the trained one)."""
        return model

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold besides the model to resume exactly."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """The inverse of ``state_tensors``."""


class TCL(Method):
    name = "tcl"
    unused_parameters = False
    judged = True

    def __init__(self, tcl_cfg, gather: Gather | None):
        self.cfg = tcl_cfg
        self.weights = TCLWeights(tcl_cfg.lambda_con, tcl_cfg.lambda_cls, tcl_cfg.lambda_align, tcl_cfg.lambda_ent,
                                  tcl_cfg.lambda_ne)
        self.gather = gather

    def step_terms(self, model: torch.nn.Module, views: Views, batch: StepInputs) -> dict[str, torch.Tensor]:
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
        em = detector.em_step(z, p, labels, self.cfg.temperature, self.cfg.per_class_gmm, self.cfg.gmm_backend)
        return Detection(em.confidences, detector.suspicion(em.assignments, labels), em.prototypes, em.assignments)


class CrossEntropy(Method):
    name = "ce"

    def __init__(self, tcl_cfg):
        self.per_class_gmm, self.gmm_backend = tcl_cfg.per_class_gmm, tcl_cfg.gmm_backend

    def step_terms(self, model: torch.nn.Module, views: Views, batch: StepInputs) -> dict[str, torch.Tensor]:
        _, logits = model(views.weak(batch.images), project=False)
        return ce_loss(logits, batch.labels)

    def detect(self, z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor) -> Detection:
        return Detection(detector.prediction_confidences(p, labels, self.per_class_gmm, self.gmm_backend),
                         detector.suspicion(p, labels))


class TCLPlus(Method):
    """Spec section 7: the weak view mixed up, trained towards the relabelled label, and after
    ``plus.start_correction`` epochs towards (1 - w) label + w teacher argmax; the teacher is an EMA copy of the
    network (``plus.ema`` 0: its current weights) that sees the un-mixed view with dropout off."""

    name = "tcl_plus"
    starts_from_run = True

    def __init__(self, cfg, model: torch.nn.Module, relabelled: torch.Tensor):
        self.plus, self.alpha, self.trained_labels = cfg.plus, cfg.tcl.mixup_alpha, relabelled
        self.per_class_gmm, self.gmm_backend = cfg.tcl.per_class_gmm, cfg.tcl.gmm_backend
        self.teacher = copy.deepcopy(model).requires_grad_(False)
        self._teach_mode()

    def _teach_mode(self) -> None:
        # As the reference: batch statistics (train mode) but no dropout.
        self.teacher.train()
        for m in self.teacher.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()

    def own_warmup_end(self) -> int | None:
        return self.plus.start_correction

    def step_terms(self, model: torch.nn.Module, views: Views, batch: StepInputs) -> dict[str, torch.Tensor]:
        x = views.weak(batch.images)
        num_classes = self.teacher.num_classes
        target = F.one_hot(batch.labels, num_classes).float()
        self._teach_mode()  # an evaluation in between left it in eval mode
        with torch.no_grad():
            # Every step, as the reference: the teacher's BN statistics follow the un-mixed view it evaluates on.
            taught = self.teacher(x, project=False)[1].argmax(dim=1)
        if not batch.warmup:
            taught = F.one_hot(taught, num_classes).float()
            target = (1 - self.plus.teacher_weight) * target + self.plus.teacher_weight * taught
        x_mix, perm, lam = mixup(x, self.alpha)
        _, logits = model(x_mix, project=False)
        # CE is linear in the target: this is the reference's lam * CE(y_i) + (1 - lam) * CE(y_perm(i)).
        loss = soft_cross_entropy(logits, lam * target + (1 - lam) * target[perm])
        return {"loss": loss, "loss_cls": loss}

    def detect(self, z: torch.Tensor, p: torch.Tensor, labels: torch.Tensor) -> Detection:
        # The baseline's detector: the GMM on -p(given label), here of the (relabelled) labels it trains towards.
        return Detection(detector.prediction_confidences(p, labels, self.per_class_gmm, self.gmm_backend),
                         detector.suspicion(p, labels))

    def lr(self, scheduled: float, peak: float) -> float:
        return peak if self.plus.constant_lr else scheduled  # the reference's second stage keeps its lr

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module) -> None:
        # Parameters only, as the reference's momentum update: the teacher's BN statistics stay its own.
        student = [p.detach() for p in model.parameters()]
        teacher = list(self.teacher.parameters())
        if self.plus.ema == 0:
            torch._foreach_copy_(teacher, student)
        else:
            torch._foreach_lerp_(teacher, student, 1 - self.plus.ema)

    def sync_processes(self) -> None:
        # Each process's teacher tracked its own batches' BN statistics: rank 0's is the one checkpointed.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for buffer in self.teacher.buffers():
                torch.distributed.broadcast(buffer, 0)

    def network(self, model: torch.nn.Module) -> torch.nn.Module:
        # The reference evaluates its teacher (eval mode, its own BN statistics), so the run reports and publishes it.
        return self.teacher

    def state_tensors(self) -> dict[str, torch.Tensor]:
        # The relabelled labels too: a re-export (tcl_hf.export) shows them without the TCL run they came from.
        return {**{f"teacher.{k}": v.detach().contiguous() for k, v in self.teacher.state_dict().items()},
                "trained_labels": self.trained_labels.detach().contiguous()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.teacher.load_state_dict({k.removeprefix("teacher."): v for k, v in tensors.items()
                                      if k.startswith("teacher.")})
        if "trained_labels" in tensors:  # checkpoints written before they were kept hold the teacher only
            self.trained_labels = tensors["trained_labels"].to(self.trained_labels.device)


METHODS: dict[str, type[Method]] = {kind.name: kind for kind in (TCL, CrossEntropy, TCLPlus)}


def method_class(name: str) -> type[Method]:
    """The class of ``method=name`` (a validated config's), whose traits the run reads before the method exists."""
    return METHODS[name]


def create_method(cfg: Config, gather: Gather | None, model: torch.nn.Module | None = None,
                  relabelled: torch.Tensor | None = None) -> Method:
    """The method of ``cfg.method``; ``gather`` joins every process's projections for the contrastive loss; TCL+
    needs the network (its teacher starts as a copy) and the relabelled training labels."""
    kind = method_class(cfg.method)
    if kind is TCL:
        return TCL(cfg.tcl, gather)
    if kind is CrossEntropy:
        return CrossEntropy(cfg.tcl)
    return TCLPlus(cfg, model, relabelled)
