"""Is TCL's classifier still learning the labels? Health signals after each EM step, and the collapse verdict with
its one-line advice. (The automatic end of the warm-up, ``optim.warmup_epochs: auto``, reads these signals:
``tcl_hf/schedule.py``; what a collapsed run does next is ``train.on_collapse``: warn, stop, or fall back to CE,
``tcl_hf/fallback.py``.)

Why: after the warm-up TCL's targets mix prediction and label with weights set by ``scale = the estimated clean
ratio``. If the warm-up ends before the classifier has learned the labels, the EM step calls most labels noisy,
the scales shrink, and TCL trains on its own predictions: the classifier falls onto a few classes while the kNN
monitor on the very same features keeps improving. The paper's 20 warm-up epochs over 50k images never meet this;
a few thousand images or a shortened schedule do. The scales also close a loop: a lower estimate lowers the labels'
weight, which lowers the next estimate. On 1,000 CIFAR-10 images ("worse" labels, 24 epochs) an automatic warm-up
that settled (TCL from epoch 10, estimate 0.41) still fell to an estimate of 0.15 and test accuracy 0.21, while the
same run with ``tcl.scale1 = tcl.scale2 = 1`` kept 0.63 and reached 0.35 (CE: 0.35); hence the quickstart's scales.

Thresholds were chosen on CIFAR-10 subsets with CIFAR-10N human labels (preact_resnet_mini, 16 px, batch 32,
lr 0.1 per 256; "worse" is 40 % wrong, "random1" 17 %) and on the quickstart (digits, 35 % wrong). Signals per
TCL-phase epoch, first -> last; "est" is the EM step's clean-ratio estimate, "at switch" the one TCL started with:

=========================================  =============  ================  ====================  =============
run (fixed warm-up W: TCL from epoch W)    entropy ratio  est (at switch)   test acc (CE, same)   verdict fires
=========================================  =============  ================  ====================  =============
1k worse, 8 epochs, W=2 (*)                0.54 -> 0.17   0.17-0.22 (0.04)  0.11 (0.31)           epoch 3
2k worse, 10 epochs, W=2                   0.53 -> 0.31   0.07-0.21 (0.08)  0.20 (0.31)           by epoch 4
2k random1, 12 epochs, W=2                 0.60 -> 0.28   0.17-0.32 (0.21)  0.19 (0.37)           epoch 3
2k random1, 12 epochs, W=6                 0.87 -> 0.15   0.38 -> 0.12 (0.66)  0.14 (0.37)        epoch 10
CE baselines, 1k-3k images, 8-16 px        >= 0.56        0.03-0.45, jumpy  -                     (not judged)
quickstart TCL, W=5 (healthy)              >= 0.99        0.62-0.66 (0.63)  1.00 (0.94)           never
=========================================  =============  ================  ====================  =============

Predictions spread over less than half the labels' entropy happened in every collapsing run and never in a
healthy one, CE included (its weakest, on 8 px images, went down to 0.56). The clean-ratio estimate halving after
the switch would have caught the W=6 run three epochs earlier (0.66 -> 0.29 at epoch 7, test accuracy still 0.34,
then 0.14), but a warm-up's estimates are jumpy on small sets (0.02 and 0.72 on consecutive epochs of a 1k-image
run), so that rule only judges from an estimate an automatic warm-up found settled.
The kNN gap is logged but not judged: a slow but healthy classifier trails its features by more than half
(a 300-image digits run rising from 0.16 to 0.49 test accuracy had gaps 0.91 -> 0.45). Warm-up epochs are never
judged: an early classifier legitimately trails (quickstart epoch 1: entropy ratio 0.66). (The CIFAR runs above
were measured before this module existed, with the same method and signals computed after each epoch; the row
marked (*) again with today's code: README "Your own dataset", first row.)
"""
from __future__ import annotations

import math

import torch

from .errors import TCLError
from .verdict import run_verdict

# ---- signals ----------------------------------------------------------------------------------------------


def class_entropy(labels: torch.Tensor, num_classes: int) -> float:
    """Entropy (nats) of the class histogram of integer ``labels``."""
    counts = torch.bincount(labels.flatten().long().cpu(), minlength=num_classes).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum()) + 0.0  # one class: 0.0, not -0.0


def prediction_entropy_ratio(pred: torch.Tensor, given: torch.Tensor, num_classes: int) -> float:
    """Entropy of the predicted-class histogram over that of the given labels: about 1 for a classifier that
    spreads its predictions like the labels, towards 0 when it predicts few classes."""
    label_entropy = class_entropy(given, num_classes)
    if label_entropy == 0.0:
        return 1.0  # one label only: nothing to collapse onto
    return class_entropy(pred, num_classes) / label_entropy


def agreement_above_chance(pred: torch.Tensor, given: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """(agreement, z): the fraction of samples whose prediction equals the given label, and its one-sided
    binomial z-score against two independent labelings with the same class frequencies (chance agreement
    sum_k pred_k * given_k, 1/C for balanced classes)."""
    n = given.numel()
    agreement = float((pred == given).double().mean())
    pred_freq = torch.bincount(pred.flatten().long().cpu(), minlength=num_classes).double() / n
    given_freq = torch.bincount(given.flatten().long().cpu(), minlength=num_classes).double() / n
    chance = float((pred_freq * given_freq).sum())
    if chance >= 1.0:
        return agreement, 0.0
    return agreement, (agreement - chance) / math.sqrt(chance * (1.0 - chance) / n)


def knn_gap(test_acc: float | None, knn_acc: float | None, num_classes: int) -> float | None:
    """The share of the kNN monitor's margin over chance that the classifier lacks on the test set: 0 when the
    classifier is as good as kNN on its own features (or better: clipped), 1 when it is at chance while kNN is
    not. None without a test evaluation, or while kNN is itself within 0.02 of chance (nothing to compare)."""
    if test_acc is None or knn_acc is None:
        return None
    margin = knn_acc - 1.0 / num_classes
    if margin <= 0.02:
        return None
    return min(max((knn_acc - test_acc) / margin, 0.0), 1.0)


def health_signals(pred: torch.Tensor, given: torch.Tensor, num_classes: int, test_acc: float | None,
                   knn_acc: float | None) -> dict[str, float | None]:
    """The signals of one EM step: ``pred`` [N] the classifier's train-set predictions and ``given`` [N] the
    labels it trains on (readable samples), with the evaluation's test and kNN accuracy (None when skipped)."""
    agreement, z = agreement_above_chance(pred, given, num_classes)
    return {"pred_entropy_ratio": prediction_entropy_ratio(pred, given, num_classes), "label_agreement": agreement,
            "label_agreement_z": z, "knn_gap": knn_gap(test_acc, knn_acc, num_classes)}


# ---- the collapse verdict (thresholds: see the module docstring) -------------------------------------------
MIN_ENTROPY_RATIO = 0.5
MIN_CLEAN_RATIO_KEPT = 0.5


def collapse_reasons(signals: dict[str, float | None], clean_ratio: float,
                     clean_ratio_at_switch: float | None) -> list[str]:
    """Why one TCL-phase EM step looks degenerate (empty: healthy); each reason is a phrase with its numbers."""
    reasons = []
    ratio = signals["pred_entropy_ratio"]
    if ratio < MIN_ENTROPY_RATIO:
        reasons.append(f"its predictions cover few classes (entropy {ratio:.2f} of the labels')")
    if clean_ratio_at_switch and clean_ratio < MIN_CLEAN_RATIO_KEPT * clean_ratio_at_switch:
        reasons.append(f"the clean-ratio estimate fell from {clean_ratio_at_switch:.2f} to {clean_ratio:.2f}")
    return reasons


def collapse_message(epoch: int, reasons: list[str], warmup: str, on_collapse: str, scales_follow: bool,
                     back_to: int | None = None) -> str:
    """The one line a collapsed run prints (and, with ``train.on_collapse=stop``, exits with); ``warmup`` says how
    TCL started: ``fixed``, ``bounded`` (an automatic warm-up at its bound) or ``settled``; ``scales_follow``:
    unset ``tcl.scale1``/``tcl.scale2``, which shrink the label's weight with the clean-ratio estimate;
    ``back_to``: with ``fallback``, the last epoch before TCL began, whose checkpoint the run goes back to."""
    outcome = {"stop": "stopped",
               "warn": "its predictions and noise detection are now worse than a CE baseline's",
               "fallback": f"falling back to CE: from its checkpoint of epoch {back_to} (before TCL began) the run "
                           f"trains on as method=ce would (train.on_collapse=fallback)"}[on_collapse]
    fix = "For TCL itself, train again: " if on_collapse == "fallback" else "Fix: "
    return (f"TCL collapsed at epoch {epoch}: the classifier degenerated ({'; '.join(reasons)}); {outcome}. "
            f"{fix}{collapse_advice(warmup, scales_follow)}")


def collapse_advice(warmup: str, scales_follow: bool) -> str:
    """What to change before training again, by how TCL started (see ``collapse_message``)."""
    advice = {
        "fixed": "the warm-up ended before the classifier learned the labels: set optim.warmup_epochs=auto (or a "
                 "larger number), lower optim.lr, or add data",
        "bounded": "the automatic warm-up reached optim.max_warmup_epochs before the classifier was ready: raise it "
                   "(or train.epochs), lower optim.lr, or add data",
        "settled": "the warm-up had settled, so the data is too small or the lr too high for TCL: lower optim.lr, "
                   "add data, or use method=ce",
    }[warmup]
    if scales_follow:
        advice += "; and set tcl.scale1=1 tcl.scale2=1 so the given labels keep their weight as the estimate falls"
    return advice


# ---- what the trainer calls after each epoch ---------------------------------------------------------------
class CollapseStop(TCLError):
    """``train.on_collapse=stop``: the run saved a checkpoint and ends with the collapse line."""


class HealthMonitor:
    """After each epoch's EM step: adds the signals to the epoch record and judges TCL-phase epochs; which epochs
    those are, and how TCL started, it asks the run's ``Schedule``. Its one decision, ``collapsed_epoch``, lives in
    the run state, so a resumed run judges exactly as an uninterrupted one."""

    def __init__(self, cfg, method, schedule, state, num_classes: int, say):
        self.cfg, self.schedule, self.state, self.num_classes, self.say = cfg, schedule, state, num_classes, say
        # Only TCL scales its targets by the clean-ratio estimate; the other methods' signals are logged only.
        self.judged = method.judged

    def after_epoch(self, epoch: int, record: dict, pred: torch.Tensor, given: torch.Tensor) -> str | None:
        """Adds the signals to ``record``; returns the collapse line the first time this run is judged collapsed."""
        st = self.state
        signals = health_signals(pred, given, self.num_classes, record.get("test_acc"), record.get("knn_acc"))
        record.update(signals)
        if not self.judged or st.fallback_from is not None or self.schedule.in_warmup(epoch):
            return None  # a run that fell back to CE is CE from then on: nothing of TCL left to judge
        reasons = collapse_reasons(signals, record["clean_ratio_est"], self.schedule.settled_clean_ratio())
        record["collapsed"] = bool(reasons)
        if not reasons or st.collapsed_epoch is not None:
            return None
        st.collapsed_epoch = epoch
        return collapse_message(epoch, reasons, self.schedule.warmup_kind(), self.cfg.train.on_collapse,
                                self._scales_follow(), self.schedule.first_tcl_epoch() - 1)

    def _scales_follow(self) -> bool:
        return self.cfg.tcl.scale1 is None or self.cfg.tcl.scale2 is None

    def after_resume(self) -> None:
        """A collapse recorded before the resume stays in force: with ``train.on_collapse=stop`` the run stops again
        before training on (the collapse is a feedback loop that more epochs do not undo, and the settings that
        would fix it make another run); with ``warn`` it is said again, and the run's verdict keeps it."""
        epoch = self.state.collapsed_epoch
        if epoch is None:
            return
        if self.state.fallback_from is not None:
            self.say(f"note: TCL collapsed at epoch {epoch} and this run fell back to CE from its checkpoint of epoch "
                     f"{self.state.fallback_from}; it trains on as method=ce would (train.on_collapse=fallback)")
            return
        if self.cfg.train.on_collapse == "stop":
            advice = collapse_advice(self.schedule.warmup_kind(), self._scales_follow())
            raise CollapseStop(f"TCL collapsed at epoch {epoch}, before this resume, and train.on_collapse=stop: "
                               f"training on would publish the collapsed model. Fix: {advice}; then train again "
                               f"with overwrite=true")
        self.say(f"note: this run collapsed at epoch {epoch}; it trains on (train.on_collapse=warn) and its outputs "
                 f"will say so")

    def summary(self) -> dict[str, int | str | None]:
        """For summary.json: the first TCL epoch (None: TCL never started), the first collapsed epoch, the epoch whose
        checkpoint a fallback to CE went back to (None: no fallback), and the run's verdict after the epochs done so
        far (``run_verdict``)."""
        first, st = self.schedule.first_tcl_epoch(), self.state
        return {"tcl_from_epoch": first, "collapsed_epoch": st.collapsed_epoch, "fallback_from_epoch": st.fallback_from,
                "verdict": run_verdict(self.judged, first, st.collapsed_epoch, st.epoch, st.fallback_from is not None)}

    def respond(self, line: str | None, checkpoint) -> None:
        """Print the collapse line; with ``train.on_collapse=stop`` end the run (the checkpoint is saved). (With
        ``fallback`` the trainer goes back instead: ``Trainer._fall_back``.)"""
        if line is None:
            return
        if self.cfg.train.on_collapse == "stop":
            raise CollapseStop(f"{line}; checkpoint: {checkpoint}")
        self.say(line)
