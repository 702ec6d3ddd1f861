"""The training loop's budget keys: gradient accumulation, max_steps, the CE baseline."""
import json

import pytest
from fixtures import files_naming, machine_paths

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
    assert files_naming(tmp_path / "hub", str(tmp_path.parent), *machine_paths()) == []  # nothing local published


def test_a_short_run_learns_the_labels_it_was_given(tmp_path):
    # What a broken trainer (no update, wrong targets, shuffled labels, a dead EM step) fails: with 40 % of the
    # labels flipped, two epochs make the loss fall and the EM step rank the flipped labels well above chance
    # (AUC 0.5; an untrained network gives about that), and the kNN monitor far above chance (0.1).
    # The quickstart's views: digits are neither flipped nor heavily cropped.
    summary = run_job(load_config(None, [*TINY, "data.limit=480", "train.batch_size=32", "train.epochs=2",
                                         "optim.warmup_epochs=2", "optim.lr=0.4", "aug.crop_padding=2",
                                         "aug.strong_scale_min=0.5", "aug.hflip=false", f"output_dir={tmp_path}"]))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < 0.95 * records[0]["loss"]
    assert summary["noise_auc"] > 0.7 and summary["knn_acc"] > 0.6, summary
