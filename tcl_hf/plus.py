"""Starting TCL+ from a finished TCL run (``init.from``): its exported network and prototypes, and its soft
cluster assignments, which relabel every training sample its cluster claims confidently (spec section 7)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from . import rundir
from .errors import TCLError
from .hub import load_tcl_pretrained
from .recipe import flatten
from .state import RUN_STATE_TENSORS

# What the TCL run and the TCL+ run must share: the same training rows and given labels (the seed draws the
# synthetic noise and file-list subsets), the same network.
SHARED_KEYS = ("seed", "data.", "noise.", "model.backbone", "model.proj_dim")


@dataclass
class PlusStart:
    relabelled: torch.Tensor   # [N] training labels for TCL+ (the cluster where it is confident, else the given)
    prototypes: torch.Tensor   # [C, d] the TCL run's
    changed: int               # how many given labels the relabelling changed


def relabel(assignments: torch.Tensor, given: torch.Tensor, threshold: float) -> torch.Tensor:
    """A sample whose largest assignment exceeds ``threshold`` takes that cluster as its label."""
    confident, cluster = assignments.max(dim=1)
    return torch.where(confident > threshold, cluster, given)


def start_from_tcl_run(run_dir: str | Path, config: dict, model: torch.nn.Module, given: torch.Tensor,
                       threshold: float) -> PlusStart:
    """Load the TCL run's network into ``model`` (strictly) and relabel ``given`` with its assignments.

    ``config`` is this run's (``to_dict``): its data, noise and network keys must be the TCL run's, so that the
    assignments belong to the same training rows.
    """
    run_dir = Path(run_dir)
    saved = flatten(rundir.read_saved_config(run_dir, "init.from"))
    ours = flatten(config)
    if saved.get("method") != "tcl":
        raise TCLError(f"init.from: {run_dir} is a method={saved.get('method')} run; TCL+ starts from a finished "
                       f"method=tcl run")
    differ = [k for k in sorted(set(saved) | set(ours)) if k.startswith(SHARED_KEYS) and saved.get(k) != ours.get(k)]
    if differ:
        shown = ", ".join(f"{k}={saved.get(k)!r} there, {ours.get(k)!r} here" for k in differ[:3])
        raise TCLError(f"init.from: {run_dir} trained on other data or another network ({shown}); give TCL+ the "
                       f"TCL run's data, noise and model keys")
    checkpoint = rundir.newest_intact(run_dir)
    finished = (run_dir / rundir.SUMMARY_FILE).is_file() and (run_dir / rundir.HUB_DIR).is_dir()
    if checkpoint is None or not finished:
        raise TCLError(f"init.from: {run_dir} holds no finished TCL run (an intact checkpoint, summary.json and "
                       f"hub/); train it to the end first")
    pretrained = load_tcl_pretrained(run_dir / rundir.HUB_DIR)
    model.load_state_dict(pretrained.model.state_dict())
    assignments = safetensors.torch.load_file(str(checkpoint / RUN_STATE_TENSORS))["assignments"]
    if assignments.shape != (len(given), model.num_classes):
        raise TCLError(f"init.from: {checkpoint} has assignments for {tuple(assignments.shape)} samples x classes; "
                       f"this run has {len(given)} x {model.num_classes}")
    relabelled = relabel(assignments, given.cpu(), threshold)
    return PlusStart(relabelled, pretrained.prototypes, int((relabelled != given.cpu()).sum()))
