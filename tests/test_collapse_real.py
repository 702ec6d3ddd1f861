"""Issue 11 on real data: 1,000 CIFAR-10 images with CIFAR-10N's "worse" human labels (40 % wrong), a small
backbone at 16 px and an 8-epoch schedule. A fixed one-epoch warm-up (``optim.warmup_epochs=2``, the reference's
rule) collapses and the detector says so; ``optim.warmup_epochs=auto`` warms up until its bound and does not
collapse. Skipped without ../shared/data."""
from __future__ import annotations

import json

import pytest
from conftest import shared_path

from tcl_hf.config import load_config
from tcl_hf.trainer import Trainer

pytestmark = pytest.mark.slow

BUDGET = ["data.limit=1000", "data.image_size=16", "model.backbone=preact_resnet_mini", "model.proj_dim=64",
          "train.batch_size=32", "train.epochs=8", "optim.lr=0.1", "noise.type=cifarn", "noise.label_set=worse",
          "data.image_column=img", "data.label_column=label", "eval.knn_k=50", "log.progress=false"]


def _run(tmp_path, name: str, *extra: str) -> tuple[dict, list[dict]]:
    data, labels = shared_path("cifar10"), shared_path("cifar-n", "CIFAR-10_human.pt")
    out = tmp_path / name
    summary = Trainer(load_config(None, [*BUDGET, f"data.path={data}", f"noise.file={labels}", f"output_dir={out}",
                                         *extra])).train()
    return summary, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_fixed_warmup_collapses_and_auto_does_not(tmp_path, fresh_accelerate, capsys):
    ce, _ = _run(tmp_path, "ce", "method=ce", "optim.warmup_epochs=2")
    fixed, fixed_records = _run(tmp_path, "fixed", "optim.warmup_epochs=2")
    fixed_out = capsys.readouterr().out
    auto, auto_records = _run(tmp_path, "auto", "optim.warmup_epochs=auto")
    auto_out = capsys.readouterr().out
    # The fixed warm-up: predictions narrow onto few classes, the detector fires and says what to do, and the
    # classifier ends below the CE baseline trained on the same budget.
    assert fixed["collapsed_epoch"] is not None and fixed_records[fixed["collapsed_epoch"] - 1]["collapsed"]
    assert min(r["pred_entropy_ratio"] for r in fixed_records[1:]) < 0.5
    assert f"TCL collapsed at epoch {fixed['collapsed_epoch']}" in fixed_out and "warmup_epochs=auto" in fixed_out
    assert fixed["test_acc"] < ce["test_acc"]
    # The automatic warm-up: it switches (here at its bound, half the run), never collapses, and keeps a
    # classifier and a detector clearly better than the collapsed run's.
    assert auto["tcl_from_epoch"] == 5 and "TCL from epoch 5" in auto_out
    assert auto["collapsed_epoch"] is None and not any(r.get("collapsed") for r in auto_records)
    assert "TCL collapsed" not in auto_out
    assert auto["test_acc"] > fixed["test_acc"] and auto["noise_auc"] > fixed["noise_auc"]
