"""Starting TCL+ from a finished TCL run (``init.from``): its exported network and prototypes, and its soft
cluster assignments, which relabel every training sample its cluster claims confidently (spec section 7)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from . import rundir
from .errors import TCLError
from .methods import TCL
from .recipe import flatten
from .state import RUN_STATE_JSON, RUN_STATE_TENSORS
from .tcl_state import load_tcl_state
from .verdict import VERDICT_OK, fell_back, summary_verdict

# What the TCL run and the TCL+ run must share: the same training rows and given labels (the seed draws the
# synthetic noise and file-list subsets), the same network.
SHARED_KEYS = ("seed", "data.", "noise.", "model.backbone", "model.proj_dim")


@dataclass
class PlusStart:
    relabelled: torch.Tensor   # [N] training labels for TCL+ (the cluster where it is confident, else the given)
    prototypes: torch.Tensor   # [C, d] the TCL run's
    changed: int               # how many given labels the relabelling changed
    verdict: str               # the TCL run's (tcl_hf/verdict.py); a failed one only with init.accept_failed

    def describe(self, total: int) -> str:
        failed = f" (a failed run, TCL {self.verdict}: init.accept_failed=true)" if self.verdict != VERDICT_OK else ""
        return f"TCL+: the TCL run's clusters relabel {self.changed} of {total} training labels{failed}"


def relabel(assignments: torch.Tensor, given: torch.Tensor, threshold: float) -> torch.Tensor:
    """A sample whose largest assignment exceeds ``threshold`` takes that cluster as its label."""
    confident, cluster = assignments.max(dim=1)
    return torch.where(confident > threshold, cluster, given)


def start_from_tcl_run(run_dir: str | Path, config: dict, model: torch.nn.Module, given: torch.Tensor,
                       threshold: float) -> PlusStart:
    """Load the TCL run's network into ``model`` (strictly) and relabel ``given`` with its assignments.

    ``config`` is this run's (``to_dict``): its data, noise and network keys must be the TCL run's, so that the
    assignments belong to the same training rows; ``init.accept_failed`` lets it start from a failed run. The run
    folder is read under its lock (shared), so no run trains or resumes there meanwhile.
    """
    run_dir = Path(run_dir)
    with rundir.shared_run_lock(run_dir, "init.from"):
        saved = flatten(rundir.read_saved_config(run_dir, "init.from"))
        ours = flatten(config)
        if saved.get("method") != TCL.name:
            raise TCLError(f"init.from: {run_dir} is a method={saved.get('method')} run; TCL+ starts from a finished "
                           f"method={TCL.name} run")
        differ = [k for k in sorted(set(saved) | set(ours))
                  if k.startswith(SHARED_KEYS) and saved.get(k) != ours.get(k)]
        if differ:
            shown = ", ".join(f"{k}={saved.get(k)!r} there, {ours.get(k)!r} here" for k in differ[:3])
            raise TCLError(f"init.from: {run_dir} trained on other data or another network ({shown}); give TCL+ the "
                           f"TCL run's data, noise and model keys")
        checkpoint, verdict = _finished_point(run_dir, bool(ours.get("init.accept_failed")))
        pretrained = load_tcl_state(run_dir / rundir.HUB_DIR)
        assignments = safetensors.torch.load_file(str(checkpoint / RUN_STATE_TENSORS))["assignments"]
    model.load_state_dict(pretrained.model.state_dict())
    if assignments.shape != (len(given), model.num_classes):
        raise TCLError(f"init.from: {checkpoint} has assignments for {tuple(assignments.shape)} samples x classes; "
                       f"this run has {len(given)} x {model.num_classes}")
    relabelled = relabel(assignments, given.cpu(), threshold)
    return PlusStart(relabelled, pretrained.prototypes, int((relabelled != given.cpu()).sum()), verdict)


def _finished_point(run_dir: Path, accept_failed: bool) -> tuple[Path, str]:
    """The checkpoint of the step the run finished at, where hub/ (the network) and summary.json were written, and
    the run's verdict. The network comes from hub/, the assignments from that checkpoint: a run resumed after it
    finished (newer checkpoints, an older hub/) would mix two points of training, so it is refused."""
    checkpoint = rundir.newest_intact(run_dir)
    summary_file = run_dir / rundir.SUMMARY_FILE
    if checkpoint is None or not summary_file.is_file() or not (run_dir / rundir.HUB_DIR).is_dir():
        raise TCLError(f"init.from: {run_dir} holds no finished TCL run (an intact checkpoint, summary.json and "
                       f"hub/); train it to the end first")
    try:
        summary = json.loads(summary_file.read_text())
        step = json.loads((checkpoint / RUN_STATE_JSON).read_text())["step"]
        finished_at = summary["steps"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TCLError(f"init.from: {summary_file} or {checkpoint / RUN_STATE_JSON} cannot be read ({exc!r}); "
                       f"train the run to the end again") from None
    if finished_at != step:
        raise TCLError(f"init.from: {run_dir} finished at step {finished_at} (summary.json, hub/) but its newest "
                       f"checkpoint is {checkpoint.name}: it was resumed since and has not finished again; finish it "
                       f"(train.resume=true) so that the network and the assignments come from the same step")
    verdict = summary_verdict(summary)
    if verdict != VERDICT_OK and not accept_failed:
        why = ("its network was trained on as the CE baseline after TCL collapsed, so TCL+ would not start from TCL"
               if fell_back(verdict) else "its clusters would relabel the data with a degenerate model")
        raise TCLError(f"init.from: {run_dir} is a failed TCL run (TCL {verdict}, summary.json): {why}; train it "
                       f"again, or start from it anyway with init.accept_failed=true")
    return checkpoint, verdict
