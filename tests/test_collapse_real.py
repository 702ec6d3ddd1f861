"""Issue 11 on real data: a few thousand CIFAR-10 images with CIFAR-10N human labels, a small backbone and a short
schedule. A fixed one-epoch warm-up collapses (the detector fires), ``optim.warmup_epochs=auto`` does not: TCL's
noise AUC and test accuracy are at least those of the CE baseline on the same budget. Skipped without
../shared/data."""
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
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = ("test_acc", "noise_auc", "clean_ratio_est", "label_acc", "pred_entropy_ratio")
    print(name, {k: round(summary[k], 3) for k in keys}, "collapsed:",
          [r["epoch"] for r in records if r.get("collapsed")])
    return summary, records


def test_short_fixed_warmup_collapses_and_auto_does_not(tmp_path, fresh_accelerate, capsys):
    ce, _ = _run(tmp_path, "ce", "method=ce", "optim.warmup_epochs=2")
    fixed, fixed_records = _run(tmp_path, "fixed", "optim.warmup_epochs=2")
    auto, auto_records = _run(tmp_path, "auto", "optim.warmup_epochs=auto")
    assert any(r.get("collapsed") for r in fixed_records)
    assert "TCL collapsed at epoch" in capsys.readouterr().out
    assert not any(r.get("collapsed") for r in auto_records)
    assert auto["noise_auc"] >= ce["noise_auc"] and auto["test_acc"] >= ce["test_acc"]
    assert fixed["test_acc"] < ce["test_acc"]
