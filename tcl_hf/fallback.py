"""``train.on_collapse: fallback``: when TCL's phase collapses (``tcl_hf/health.py``), the run goes back to its
checkpoint from before TCL began and trains the remaining epochs as the CE baseline would (``method=ce``: its loss,
its lr schedule, its detector), so a collapse leaves the user a baseline-level model and label report, named as such
(``tcl_hf/verdict.py``).

Why that checkpoint and not the one just before the collapse: the collapse is a feedback loop that starts with TCL's
first epoch, so the later checkpoints may already carry it. Measured both ways on the collapsing digits setting of
tests/test_fallback.py (seeds 0-4, the line at epoch 4 on each, so "just before" is TCL's one healthy-looking epoch):
going back to before TCL ended at test accuracy 0.833 0.814 0.783 0.831 0.847 (mean 0.822) and noise AUC 0.978 0.965
0.970 0.963 0.982 (0.972); going back to the epoch before the collapse at 0.856 0.772 0.722 0.722 0.842 (0.783) and
0.981 0.969 0.941 0.956 0.978 (0.965): ahead on two seeds, behind by up to 0.11 on the others. (A one-off
measurement, 2026-12-05, with a temporary switch in this module that was not kept: no shipped command repeats it.)

The checkpoint is kept from rotation (``RunState.before_tcl_step``); going back writes it again with the fallback in
its run state (``fallback_from``) and removes the TCL checkpoints after it, so a resume continues the fallback, and
a run killed before that redoes the collapsed epoch, which collapses again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import rundir
from .health import CollapseStop
from .state import RunState


def keeps_checkpoint(on_collapse: str, schedule, epoch: int) -> bool:
    """Whether the checkpoint written after ``epoch`` (0: before the first) is the one a fallback goes back to."""
    return on_collapse == "fallback" and schedule.tcl_starts_after(epoch)


def go_back(output_dir: Path, state: RunState, load: Callable[[Path], None], agree: Callable[[bool], bool]) -> None:
    """Load the checkpoint from before TCL began with ``load(folder)`` (model, optimizer, RNG and run state) and
    record the fallback in ``state``. ``agree(failed_here)``: whether any process failed. Raises ``CollapseStop``
    when that checkpoint cannot be used."""
    collapsed, step = state.collapsed_epoch, state.before_tcl_step
    folder = rundir.checkpoint_of_step(output_dir, step)
    problem = rundir.load_checkpoint(folder, load) if folder else "gone"
    if agree(problem is not None):
        why = problem or "it failed to load on another process"
        raise CollapseStop(f"TCL collapsed at epoch {collapsed} and cannot fall back to CE: its checkpoint from before "
                           f"TCL began (step {step}) cannot be used ({why}); train again with overwrite=true")
    state.collapsed_epoch, state.fallback_from = collapsed, state.epoch
