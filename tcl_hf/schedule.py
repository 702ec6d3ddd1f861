"""The run's phases, in one place: which epochs warm up and which train TCL, the lr of every optimizer step, and
the end of an automatic warm-up (``optim.warmup_epochs: auto``).

The loop asks, as timm's ``Scheduler`` is asked: ``in_warmup(epoch)`` before an epoch, ``lr(step)`` before each
optimizer step, ``after_epoch(epoch, record)`` after the epoch's EM step. The decisions (``tcl_from_epoch``,
``warmup_history``, ``switch_clean_ratio``) are stored in the run state, which saves them with every checkpoint, so
a resumed run decides exactly as an uninterrupted one; only this module reads or writes them.

An automatic warm-up ends once the classifier is ready for TCL's targets: for ``SETTLE_STEPS`` EM steps it agrees
with the given labels beyond chance and the clean-ratio estimate has settled, or at its bound whatever the
signals (the signals, and why a warm-up that ends too early collapses: ``tcl_hf/health.py``).
"""
from __future__ import annotations

import math
from typing import Callable

from .optim import auto_lr_at, lr_at, lr_ramp_epochs, scaled_lr

MIN_AGREEMENT_Z = 3.0     # one-sided p < 0.002 that the classifier agrees with the labels only by chance
SETTLE_STEPS = 3          # EM steps whose clean-ratio estimates must agree
SETTLE_TOLERANCE = 0.05   # the quickstart settles within 0.02 (0.66, 0.68, 0.68); a 1k CIFAR warm-up jumps 0.3+
MAX_WARMUP_FRACTION = 0.5  # at least half the run is TCL: a longer warm-up leaves too little to gain from it


def tcl_starts_at(warmup_epochs: int) -> int:
    """The first epoch (from 1) that trains TCL under a fixed ``optim.warmup_epochs`` W: epoch e warms up while
    e < W (the reference's rule), so W = 0 and W = 1 both start TCL at epoch 1."""
    return max(warmup_epochs, 1)


def max_warmup_epochs(configured: int | None, epochs: int) -> int:
    """The bound on an automatic warm-up: ``optim.max_warmup_epochs``, or half of ``train.epochs``."""
    return configured if configured is not None else max(1, math.floor(MAX_WARMUP_FRACTION * epochs))


def warmup_text(cfg) -> str:
    """The warm-up rule of ``cfg`` in words, for the run's plan line (``tcl_hf/plan.py``)."""
    warmup = cfg.optim.warmup_epochs
    if warmup == "auto":
        bound = max_warmup_epochs(cfg.optim.max_warmup_epochs, cfg.train.epochs)
        return f"warm-up automatic (until the classifier is ready, at most {bound} epochs)"
    return f"warm-up fixed: {warmup} epochs"


def warmup_settled(history: list[list[float]]) -> bool:
    """Whether the EM steps in ``history`` (one [agreement z, clean-ratio estimate] per warm-up epoch, oldest first)
    show a ready classifier: each of the last ``SETTLE_STEPS`` better than chance on the given labels, and their
    estimates within ``SETTLE_TOLERANCE`` of each other."""
    recent = history[-SETTLE_STEPS:]
    if len(recent) < SETTLE_STEPS:
        return False
    estimates = [estimate for _, estimate in recent]
    return all(z >= MIN_AGREEMENT_Z for z, _ in recent) and max(estimates) - min(estimates) <= SETTLE_TOLERANCE


def warmup_finished(history: list[list[float]], max_epochs: int) -> bool:
    """Whether an automatic warm-up ends after the EM steps in ``history``: once settled, or after ``max_epochs``
    warm-up epochs whatever the signals."""
    return len(history) >= max_epochs or warmup_settled(history)


class Schedule:
    """The phases and lr of one run, built from the config, the method (its traits ``judged``, ``lr`` and
    ``own_warmup_end``), the run state that stores the decisions, the total batch (for ``optim.scale_lr``) and the
    optimizer steps per epoch. ``say`` prints the switch's one line."""

    def __init__(self, cfg, method, state, total_batch: int, steps_per_epoch: int, say: Callable[[str], None]):
        self.cfg, self.method, self.state, self.say = cfg, method, state, say
        self.warmup_epochs = cfg.optim.warmup_epochs  # a number, or "auto"
        self.auto = self.warmup_epochs == "auto"
        # Only a judged method (TCL) has a TCL phase whose start the signals decide; the others' epochs are
        # warm-up by the number alone (CE's objective ignores it; TCL+ has its own, ``own_warmup_end``).
        self.judged = method.judged
        self.peak_lr = scaled_lr(cfg.optim.lr, total_batch, cfg.optim.scale_lr)
        self.steps_per_epoch = steps_per_epoch

    # ---- asked by the loop ----------------------------------------------------------------------------
    def in_warmup(self, epoch: int) -> bool:
        """Whether ``epoch`` (from 1) trains with the warm-up objective: the method's own warm-up where it has one;
        else the epochs before ``optim.warmup_epochs``, or with ``auto`` those before the first TCL epoch the run
        has decided (all of them while undecided)."""
        own = self.method.own_warmup_end()
        if own is not None:
            return epoch <= own
        if self.auto:
            return self.state.tcl_from_epoch is None or epoch < self.state.tcl_from_epoch
        return epoch < self.warmup_epochs

    def lr(self, step: int) -> float:
        """The lr of optimizer step ``step`` (from 1), at the fractional epoch it ends (spec section 4; ``auto``:
        ``tcl_hf.optim.auto_lr_at``), then the method's lr policy (TCL+ may keep the peak)."""
        o, epochs = self.cfg.optim, self.cfg.train.epochs
        epoch = step / self.steps_per_epoch
        if self.auto:
            lr = auto_lr_at(epoch, self.peak_lr, epochs, o.min_lr_ratio, self.lr_switch())
        else:
            lr = lr_at(epoch, self.peak_lr, self.warmup_epochs, epochs, o.min_lr_ratio, o.cosine_quirk)
        return self.method.lr(lr, self.peak_lr)

    def after_epoch(self, epoch: int, record: dict) -> None:
        """After ``epoch``'s EM step, whose record holds the health signals (``label_agreement_z``) and the
        clean-ratio estimate: an automatic warm-up of a judged method ends here once it is ready (or bounded)."""
        if self.auto and self.judged and self.in_warmup(epoch):
            self._decide_switch(epoch, record["label_agreement_z"], record["clean_ratio_est"])

    def _decide_switch(self, epoch: int, z: float, estimate: float) -> None:
        st, cap = self.state, max_warmup_epochs(self.cfg.optim.max_warmup_epochs, self.cfg.train.epochs)
        st.warmup_history.append([z, estimate])
        if warmup_finished(st.warmup_history, cap):
            st.tcl_from_epoch = epoch + 1
            settled = warmup_settled(st.warmup_history)
            # Only a settled estimate is a baseline to fall from: one forced by the bound (or a fixed warm-up) can
            # be anything (0.02 and 0.72 on consecutive epochs of a 1k-image warm-up).
            st.switch_clean_ratio = estimate if settled else None
            why = "classifier ready" if settled else "reached optim.max_warmup_epochs"
            self.say(f"warm-up done after epoch {epoch} ({why}: agreement z {z:.1f}, clean-ratio estimate "
                     f"{estimate:.2f}); TCL from epoch {epoch + 1}")

    # ---- asked by the health monitor and the summary ---------------------------------------------------
    def lr_switch(self) -> int | None:
        """Warm-up epochs done, for the automatic lr schedule (None: TCL's switch is still undecided). Methods
        without a TCL phase (the CE baseline, and a TCL run once it fell back to it) start their cosine where the
        ramp ends, a plain warm-up-cosine."""
        if not self.judged or self.state.fallback_from is not None:
            return lr_ramp_epochs(self.cfg.train.epochs)
        return self.state.tcl_from_epoch - 1 if self.state.tcl_from_epoch else None

    def first_tcl_epoch(self) -> int | None:
        """For summary.json and the verdict: the first TCL epoch (None: the method has no TCL phase, or TCL did not
        start within ``train.epochs``)."""
        first = self.state.tcl_from_epoch if self.auto else tcl_starts_at(self.warmup_epochs)
        if not self.judged or (first is not None and first > self.cfg.train.epochs):
            return None
        return first

    def tcl_starts_after(self, epoch: int) -> bool:
        """Whether ``epoch`` (0: before the first) is the last before TCL's first epoch: its checkpoint is the one
        ``train.on_collapse=fallback`` goes back to."""
        return self.judged and self.first_tcl_epoch() == epoch + 1

    def settled_clean_ratio(self) -> float | None:
        """The settled clean-ratio estimate an automatic warm-up handed to TCL (None: fixed, bounded or undecided)."""
        return self.state.switch_clean_ratio

    def warmup_kind(self) -> str:
        """How TCL started: ``fixed`` (a number of warm-up epochs), ``settled`` or ``bounded`` (automatic, ended by
        the signals or by its bound)."""
        return "fixed" if not self.auto else "settled" if self.state.switch_clean_ratio is not None else "bounded"
