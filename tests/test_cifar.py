"""The CIFAR-10 path end to end on the shared copy (skipped where it is absent): canonical order,
labels, and a two-step training run that writes every output."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tcl_hf.config import load_config

# Every test here trains or launches processes: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LOSS_KEYS = ("loss", "loss_con", "loss_cls", "loss_align", "loss_ent", "loss_ne")
EPOCH_KEYS = ("epoch", "lr", *LOSS_KEYS, "test_acc", "knn_acc", "clean_ratio_est", "noise_rate", "noise_auc",
              "noise_precision", "noise_recall", "label_acc")


def parquet_column(cifar10_dir, split, column):
    import pyarrow.parquet as pq

    shards = sorted((cifar10_dir / "plain_text").glob(f"{split}-*.parquet"))
    return np.concatenate([pq.read_table(s, columns=[column])[column].to_numpy(zero_copy_only=False) for s in shards])


def parquet_labels(cifar10_dir, split, rows):
    """The labels of the canonical order's `rows` (data.limit's seeded, class-stratified draw)."""
    return parquet_column(cifar10_dir, split, "label")[rows]


def test_load_data_reads_cifar10_in_canonical_order(cifar10_dir):
    from tcl_hf.data.contract import InputContract
    from tcl_hf.data import load_data

    cfg = load_config(None, [f"data.path={cifar10_dir}", "data.limit=64"])
    data = load_data(cfg.data, InputContract(32, 32, 1.0, "bilinear"))
    assert len(data.train) == 64 and len(data.test) == 64
    assert data.full_train_size == 50000
    import io

    from PIL import Image

    from tcl_hf.feeding.sampler import stratified_sample

    images = parquet_column(cifar10_dir, "train", "img")
    # The shards are in the canonical order: the first image of data_batch_1 starts with red values 59, 43, 50.
    assert np.asarray(Image.open(io.BytesIO(images[0]["bytes"])))[0, :3, 0].tolist() == [59, 43, 50]
    # data.limit drew these rows of that order, and each image is its own row's.
    rows = data.train_indices
    assert np.array_equal(rows, stratified_sample(parquet_column(cifar10_dir, "train", "label"), 64, seed=0))
    for i in (0, 31, 63):
        assert data.train[i][0].shape == (3, 32, 32)
        own = np.asarray(Image.open(io.BytesIO(images[rows[i]]["bytes"])).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(data.train[i][0].numpy(), own)
    assert data.num_classes == 10 and data.class_names == CLASS_NAMES
    np.testing.assert_array_equal(data.train_labels, parquet_labels(cifar10_dir, "train", rows))
    test_rows = stratified_sample(parquet_column(cifar10_dir, "test", "label"), 64, seed=0)
    np.testing.assert_array_equal(data.test_labels, parquet_labels(cifar10_dir, "test", test_rows))
    assert data.clean_train_labels is None


def test_two_step_run_writes_every_output(cifar10_dir, tmp_path, fresh_accelerate):
    from tcl_hf.trainer import Trainer

    out = tmp_path / "run"
    cfg = load_config(None, [
        f"data.path={cifar10_dir}", "data.limit=64", "train.batch_size=16", "train.max_steps=2",
        "train.epochs=2", "model.backbone=preact_resnet_mini", "log.progress=false", f"output_dir={out}",
        "noise.type=sym", "noise.rate=0.5",
    ])
    trainer = Trainer(cfg)
    summary = trainer.train()

    assert load_config(out / "config.yaml") == cfg
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(lines) == 1
    record = lines[0]
    for key in EPOCH_KEYS:
        assert key in record, key
    saved = json.loads((out / "summary.json").read_text())
    for key in (*EPOCH_KEYS, "wall_s", "samples_per_s"):
        assert key in saved, key
    assert saved == json.loads(json.dumps(summary))

    # Two steps of 16 in a 4-step epoch: epoch 1 is cut short and recorded, epoch 2 never starts.
    assert record["epoch"] == 1 and saved["steps"] == 2
    # lr of the second step: peak 0.03 * 16 / 256, warmed up linearly over 20 epochs, at epoch 2/4.
    assert record["lr"] == pytest.approx(0.03 * 16 / 256 * 0.5 / 20)
    # With all weights 1 the total is the sum of the terms (each an epoch mean).
    assert record["loss"] == pytest.approx(sum(record[k] for k in LOSS_KEYS[1:]), rel=1e-5)
    # Noise is measured against the dataset's own labels, the ones synthetic noise started from.
    given = trainer.given_labels.cpu().numpy()
    truth = parquet_labels(cifar10_dir, "train", trainer.data.train_indices)
    assert record["noise_rate"] == pytest.approx(np.mean(given != truth))
    assert 0.2 < record["noise_rate"] < 0.7
    for key in ("test_acc", "knn_acc", "clean_ratio_est", "label_acc", "noise_precision"):
        assert 0.0 <= record[key] <= 1.0, key
    assert record["noise_auc"] is None or 0.0 <= record["noise_auc"] <= 1.0
    assert saved["wall_s"] > 0 and saved["samples_per_s"] > 0

    # One complete checkpoint (temporary folders start with a dot) with weights and the run state.
    checkpoints = [p for p in (out / "checkpoints").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(checkpoints) == 1
    files = {p.name for p in checkpoints[0].iterdir()}
    assert {"model.safetensors", "run_state.safetensors", "run_state.json", "manifest.json"} <= files
    assert not [name for name in files if name.startswith("custom_checkpoint")]  # nothing of ours is pickled
