"""The training loop's budget keys: gradient accumulation, max_steps, the CE baseline."""
import json

import pytest

from tcl_hf.config import load_config
from tcl_hf.job import run_job

# Every test here trains or launches processes: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

TINY = ["data.format=digits", "data.limit=96", "data.image_size=16", "model.backbone=preact_resnet_mini",
        "model.proj_dim=16", "noise.type=sym", "noise.rate=0.4", "train.batch_size=8", "eval.knn_k=10",
        "log.progress=false", "optim.warmup_epochs=1"]


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    summary = run_job(load_config(None, [*TINY, "train.epochs=2", "train.grad_accum_steps=3",
                                         f"output_dir={tmp_path}"]))
    # 96 samples / batch 8 = 12 micro-batches per epoch -> 4 optimizer steps per epoch.
    assert summary["steps"] == 8
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8]


def test_max_steps_stops_mid_epoch_and_still_writes_everything(tmp_path):
    summary = run_job(load_config(None, [*TINY, "train.epochs=5", "train.max_steps=3",
                                         f"output_dir={tmp_path}"]))
    assert summary["steps"] == 3 and summary["epochs_completed"] == 1
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "label_issues.csv", "hub/model.safetensors"):
        assert (tmp_path / name).exists(), name
    assert summary["noise_auc"] is not None and 0 <= summary["test_acc"] <= 1


def test_ce_baseline_trains_with_noisy_labels_only(tmp_path):
    summary = run_job(load_config(None, [*TINY, "method=ce", "train.epochs=1", f"output_dir={tmp_path}"]))
    assert set(summary) >= {"loss", "loss_cls", "test_acc", "noise_auc"}
    assert "loss_con" not in summary and summary["loss"] == pytest.approx(summary["loss_cls"])
