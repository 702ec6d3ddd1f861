"""Issue 11 on real data: 1,000 CIFAR-10 images with CIFAR-10N's "worse" human labels (42.7 % wrong), a small
backbone at 16 px and an 8-epoch schedule, three runs on the same budget:

- the reference's settings (a fixed warm-up, ``optim.warmup_epochs=2``, and target scales that follow the
  clean-ratio estimate) with ``train.on_collapse=stop``: the detector fires and the run stops with its line;
- the quickstart's settings (``optim.warmup_epochs=auto``, ``tcl.scale1=tcl.scale2=1``): no collapse;
- the cross-entropy baseline.

The issue also asks the quickstart-style run to reach the baseline's test accuracy and noise AUC. At this budget it
does not (README "Your own dataset"); the strict xfail says so, and turns red the day it does. Skipped without
../shared/data.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import reset_accelerate, shared_path

from tcl_hf.collapse import CollapseStop
from tcl_hf.config import load_config
from tcl_hf.trainer import Trainer

pytestmark = pytest.mark.slow

BUDGET = ["data.limit=1000", "data.image_size=16", "model.backbone=preact_resnet_mini", "model.proj_dim=64",
          "train.batch_size=32", "train.epochs=8", "optim.lr=0.1", "noise.type=cifarn", "noise.label_set=worse",
          "data.image_column=img", "data.label_column=label", "eval.knn_k=50", "log.progress=false"]
QUICKSTART_GUARDS = ["optim.warmup_epochs=auto", "tcl.scale1=1", "tcl.scale2=1"]


def budget_runs(data: Path, labels: Path, root: Path, seed: int = 0) -> dict[str, dict]:
    """The three runs on one budget (also run over seeds by bench/outcome_margins.py)."""
    found = {}
    for name, extra in [("reference", ["optim.warmup_epochs=2", "train.on_collapse=stop"]),
                        ("quickstart", QUICKSTART_GUARDS), ("ce", ["method=ce", "optim.warmup_epochs=2"])]:
        reset_accelerate()
        out = root / name
        cfg = load_config(None, [*BUDGET, f"data.path={data}", f"noise.file={labels}", f"output_dir={out}",
                                 f"seed={seed}", *extra])
        summary, stopped = None, None
        try:
            summary = Trainer(cfg).train()
        except CollapseStop as stop:
            stopped = str(stop)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        found[name] = {"summary": summary, "stopped": stopped, "records": records}
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    data, labels = shared_path("cifar10"), shared_path("cifar-n", "CIFAR-10_human.pt")
    return budget_runs(data, labels, tmp_path_factory.mktemp("collapse_real"))


def test_reference_settings_collapse_and_the_run_stops_with_its_line(runs):
    ref = runs["reference"]
    line, last = ref["stopped"], ref["records"][-1]
    assert ref["summary"] is None and line is not None, "the collapse detector did not fire"
    # It stops at the first epoch judged collapsed: predictions spread over less than half the labels' entropy.
    assert last["collapsed"] is True and last["pred_entropy_ratio"] < 0.5
    assert not any(r.get("collapsed") for r in ref["records"][:-1])
    assert line.startswith(f"TCL collapsed at epoch {last['epoch']}: the classifier degenerated (")
    assert "optim.warmup_epochs=auto" in line and "tcl.scale1=1 tcl.scale2=1" in line and "\n" not in line
    checkpoint = Path(line.rsplit("checkpoint: ", 1)[1])
    assert (checkpoint / "run_state.json").is_file()


def test_quickstart_settings_do_not_collapse(runs):
    run, ref = runs["quickstart"], runs["reference"]["records"][-1]
    summary = run["summary"]
    # Not settled in 4 epochs of 1,000 images: the warm-up ends at its bound, half the run.
    assert summary["tcl_from_epoch"] == 5 and summary["collapsed_epoch"] is None
    tcl_epochs = run["records"][4:]
    assert [r["epoch"] for r in tcl_epochs] == [5, 6, 7, 8] and not any(r["collapsed"] for r in tcl_epochs)
    assert min(r["pred_entropy_ratio"] for r in tcl_epochs) >= 0.5
    # Its detector ranks noisy labels clearly better than the collapsed run's.
    assert summary["noise_auc"] > ref["noise_auc"] + 0.05


@pytest.mark.xfail(strict=True, reason="issue 11: at a few CPU minutes TCL trails the CE baseline on real CIFAR "
                                       "data (README 'Your own dataset')")
def test_quickstart_settings_reach_the_ce_baseline(runs):
    tcl, ce = runs["quickstart"]["summary"], runs["ce"]["summary"]
    assert tcl["test_acc"] >= ce["test_acc"] and tcl["noise_auc"] >= ce["noise_auc"]
