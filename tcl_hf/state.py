"""What a resumed run needs besides model, optimizer and RNG states: progress and the EM step's results."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import safetensors.torch
import torch
import torch.nn.functional as F

from .errors import ConfigError
from .recipe import coerce, in_range, non_negative

RUN_STATE_TENSORS, RUN_STATE_JSON = "run_state.safetensors", "run_state.json"
METHOD_STATE = "method_state.safetensors"  # what a method keeps besides the model (TCL+'s teacher)


def _pairs(history: list[list[float]]) -> str | None:
    return None if all(len(pair) == 2 for pair in history) else "must hold [agreement z, clean-ratio estimate] pairs"


class RunState:
    """Progress and EM state; saved in every checkpoint as safetensors + JSON, never pickled."""

    TENSORS = ("confidences", "assignments", "prototypes")
    # Added later: a checkpoint written before them still resumes (they keep their defaults), but has no
    # last EM step for a re-export to publish (tcl_hf.export.finished_run says so).
    LATER_TENSORS = ("predictions", "unreadable", "suspicion")
    # Likewise for the saved JSON: a checkpoint written before these keeps their defaults.
    LATER_SCALARS = ("before_tcl_step", "fallback_from")
    # The saved JSON's values, each with its type and range (checked as recipe keys are): a checkpoint whose
    # values do not fit does not load, so the resume falls back to the one before it.
    SCALARS = {"epoch": (int, non_negative), "step": (int, non_negative), "batches_done": (int, non_negative),
               "loss_sums": (dict[str, float], None), "samples": (int, non_negative),
               "train_seconds": (float, non_negative), "wall_seconds": (float, non_negative),
               "scale1": (float, in_range(0.0, 1.0)), "scale2": (float, in_range(0.0, 1.0)),
               "tcl_from_epoch": (Optional[int], non_negative),
               "warmup_history": (list[list[float]], _pairs),
               "switch_clean_ratio": (Optional[float], in_range(0.0, 1.0)),
               "collapsed_epoch": (Optional[int], non_negative),
               "before_tcl_step": (Optional[int], non_negative), "fallback_from": (Optional[int], non_negative)}

    def __init__(self, num_samples: int, num_classes: int, proj_dim: int):
        self.epoch = 0          # completed epochs
        self.step = 0           # optimizer steps taken
        self.batches_done = 0   # batches of the epoch in progress (a mid-epoch checkpoint resumes after them)
        self.loss_sums: dict[str, float] = {}  # running sums of the loss terms over those batches
        self.samples = 0        # training samples processed (all processes)
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.confidences = torch.zeros(num_samples)
        self.assignments = torch.zeros(num_samples, num_classes)
        self.prototypes = F.normalize(torch.randn(num_classes, proj_dim), dim=1)
        # The last EM step's verdict for the report: the classifier's prediction (-1: none stored yet) and which
        # training images could not be read.
        self.predictions = torch.full((num_samples,), -1, dtype=torch.long)
        self.unreadable = torch.zeros(num_samples, dtype=torch.bool)
        self.suspicion = torch.ones(num_samples)  # the report's order (tcl_hf.detector.suspicion), most suspect first
        self.scale1 = 0.0
        self.scale2 = 0.0
        # Decisions kept so a resumed run continues exactly. tcl_hf.schedule alone reads and writes these three:
        self.tcl_from_epoch: int | None = None         # optim.warmup_epochs=auto: the first TCL epoch, once decided
        self.warmup_history: list[list[float]] = []    # auto: [agreement z, clean-ratio estimate] per warm-up epoch
        self.switch_clean_ratio: float | None = None   # auto: the settled estimate TCL started with
        # and tcl_hf.health this one:
        self.collapsed_epoch: int | None = None        # the first epoch judged collapsed
        # and these two train.on_collapse=fallback (tcl_hf/fallback.py):
        self.before_tcl_step: int | None = None        # the step of the checkpoint taken just before TCL's first epoch
        self.fallback_from: int | None = None          # fell back to CE: the epoch whose checkpoint it went back to

    def fell_back_after(self) -> int | None:
        """The epoch TCL collapsed at, for a run that then fell back to CE (None: no fallback); the metrics records
        behind a checkpoint depend on it (``tcl_hf.rundir.trajectory_records``)."""
        return self.collapsed_epoch if self.fallback_from is not None else None

    def add_loss_sums(self, sums: dict[str, float]) -> None:
        """Loss terms summed over some batches into the running sums of the epoch in progress."""
        for key, value in sums.items():
            self.loss_sums[key] = self.loss_sums.get(key, 0.0) + value

    def pop_loss_means(self) -> tuple[list[str], list[float]]:
        """(term names, their means over this process's batches of the epoch); starts the next epoch."""
        keys = sorted(self.loss_sums)
        means = [self.loss_sums[k] / self.batches_done for k in keys]
        self.batches_done, self.loss_sums = 0, {}
        return keys, means

    def save(self, folder: Path, method_tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Tensors as safetensors, the rest as JSON: a checkpoint's own state never needs unpickling."""
        tensors = (*self.TENSORS, *self.LATER_TENSORS)
        safetensors.torch.save_file({k: getattr(self, k).contiguous() for k in tensors},
                                    str(folder / RUN_STATE_TENSORS))
        scalars = {k: v for k, v in vars(self).items() if k not in tensors}
        (folder / RUN_STATE_JSON).write_text(json.dumps(scalars, indent=1) + "\n")
        if method_tensors:
            safetensors.torch.save_file({k: v.cpu() for k, v in method_tensors.items()}, str(folder / METHOD_STATE))

    def load(self, folder: Path) -> dict[str, torch.Tensor]:
        """Restore from ``folder``; returns the method's tensors (empty when it keeps none)."""
        tensors = safetensors.torch.load_file(str(folder / RUN_STATE_TENSORS))
        scalars = json.loads((folder / RUN_STATE_JSON).read_text())
        expected = {k: tuple(getattr(self, k).shape) for k in (*self.TENSORS, *self.LATER_TENSORS)}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        older = {k: v for k, v in expected.items() if k not in self.LATER_TENSORS}
        names = set(vars(self)) - set(expected)
        if found not in (expected, older) or not isinstance(scalars, dict) or not (
                names - set(self.LATER_SCALARS) <= set(scalars) <= names):
            raise ValueError(f"run state does not match this run (tensors {found}, expected {expected})")
        scalars = {**dict.fromkeys(self.LATER_SCALARS),
                   **{key: _checked(key, value, *self.SCALARS[key]) for key, value in scalars.items()}}
        for key, value in {**scalars, **tensors}.items():
            setattr(self, key, value)
        method = folder / METHOD_STATE
        return safetensors.torch.load_file(str(method)) if method.is_file() else {}


def _checked(key: str, value, tp, check) -> object:
    """``value`` of the saved state as type ``tp``, or a ValueError naming the file and key."""
    try:
        value = coerce(key, value, tp)
    except ConfigError as exc:
        raise ValueError(f"{RUN_STATE_JSON}: {exc}") from None
    problem = check(value) if check else None
    if problem:
        raise ValueError(f"{RUN_STATE_JSON}: {key}: {value!r} {problem}")
    return value


class LossMeter:
    """A step's loss terms summed on the training device; ``read`` brings the sums to the host (the one
    synchronisation), every ``log.every`` steps and before anything is saved."""

    def __init__(self):
        self.keys: list[str] = []
        self.sums: torch.Tensor | None = None
        self.first_step: int | None = None
        # Per term, the first step it was non-finite (inf while finite): once one term's NaN reaches the
        # weights every term turns NaN, so the sums alone cannot say which term diverged first.
        self.first_bad: torch.Tensor | None = None

    def add(self, terms: dict[str, torch.Tensor], step: int) -> None:
        values = torch.stack([v.detach().float() for v in terms.values()])
        bad_at = torch.where(values.isfinite(), float("inf"), float(step))
        if self.sums is None:
            self.keys, self.sums, self.first_step, self.first_bad = list(terms), values, step, bad_at
        else:
            self.sums += values
            self.first_bad = torch.minimum(self.first_bad, bad_at)

    def read(self) -> tuple[dict[str, float], int | None, dict[str, float]]:
        """(sums since the last read, the first step they cover, per term the first step it was non-finite or
        inf); empty when nothing was added."""
        if self.sums is None:
            return {}, None, {}
        both = torch.stack([self.sums, self.first_bad]).tolist()  # one transfer
        out, first, bad_at = dict(zip(self.keys, both[0])), self.first_step, dict(zip(self.keys, both[1]))
        self.sums, self.first_step, self.first_bad = None, None, None
        return out, first, bad_at
