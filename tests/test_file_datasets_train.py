"""A short CPU training run for each data format, checking the sample counts and accuracy keys."""
import json

import datasets
import numpy as np
import pytest
from fixtures import make_clothing1m, make_webvision
from PIL import Image

from tcl_hf.config import load_config
from tcl_hf.job import run_job

# Every test here trains or launches processes: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

SMALL = ["model.backbone=resnet18", "model.pretrained=false", "data.image_size=32", "train.batch_size=8",
         "train.max_steps=2", "train.epochs=2", "model.proj_dim=32", "eval.knn_k=5", "log.progress=false",
         "optim.warmup_epochs=1"]


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_webvision_run_counts_and_keys(tmp_path):
    layout = make_webvision(tmp_path / "wv", total_classes=8, per_class=4)
    kept = {p for p, label in layout.splits["train"] if label < 6}
    bad = (layout.corrupt | layout.missing) & kept
    out = tmp_path / "run"
    run_job(load_config(None, [*SMALL, "data.format=webvision", f"data.root={layout.root}", "data.num_classes=6",
                               f"data.imagenet_val={layout.files['imagenet']}", f"output_dir={out}"]))
    s = _summary(out)
    assert s["train_samples"] == len(kept) - len(bad) and s["bad_images"] == len(bad) > 0
    assert s["test_samples"] == sum(label < 6 for _, label in layout.splits["test"])
    assert s["imagenet_samples"] == 12
    for key in ("test_acc", "test_top5", "imagenet_acc", "imagenet_top5", "knn_acc"):
        assert 0.0 <= s[key] <= 1.0, key
    # Top-5 of 6 classes is at least as good as top-1.
    assert s["test_top5"] >= s["test_acc"]
    issues = (out / "label_issues.csv").read_text().splitlines()
    assert len(issues) - 1 == s["train_samples"]
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "hub" / "README.md")
    assert "webvision" in card.data.tags and not card.data.datasets
    assert "on WebVision 1.0, trained on noisy labels" in card.text  # 6 classes kept: not mini-WebVision


def test_clothing1m_run_with_balanced_subset(tmp_path):
    layout = make_clothing1m(tmp_path / "c1m")
    out = tmp_path / "run"
    bad = layout.corrupt | layout.missing
    run_job(load_config(None, [*SMALL, "data.format=clothing1m", f"data.root={layout.root}",
                               "data.samples_per_epoch=24", f"output_dir={out}"]))
    s = _summary(out)
    expected_bad = {split: sum(p in bad for p, _ in layout.splits[split]) for split in ("train", "val", "test")}
    assert s["bad_images"] == sum(expected_bad.values()) > 0
    for split in ("train", "val", "test"):
        assert s[f"{split}_samples"] == len(layout.splits[split]) - expected_bad[split]
    assert {"val_acc", "test_acc", "test_top5", "val_top5"} <= set(s)
    assert s["steps"] == 2


def test_on_bad_image_error_stops_naming_the_file(tmp_path):
    from tcl_hf.errors import DataError

    layout = make_clothing1m(tmp_path / "c1m")
    with pytest.raises(DataError, match="cannot be read|no such file|does not exist|image"):
        run_job(load_config(None, [*SMALL, "data.format=clothing1m", f"data.root={layout.root}",
                                   "data.on_bad_image=error", f"output_dir={tmp_path / 'run'}"]))


def test_hf_dataset_with_clean_column_and_lazy_decoding(tmp_path):
    """A Food-101N-style parquet set: noisy label column plus a verified clean one, decoded lazily."""
    rng = np.random.default_rng(0)
    n = 40
    clean = rng.integers(0, 3, n)
    noisy = np.where(rng.random(n) < 0.3, (clean + 1) % 3, clean)
    features = datasets.Features({"picture": datasets.Image(),
                                  "noisy": datasets.ClassLabel(names=["a", "b", "c"]),
                                  "verified": datasets.ClassLabel(names=["a", "b", "c"])})
    images = [Image.new("RGB", (20 + i % 7, 18), (int(80 * c), 40, 200 - int(60 * c))) for i, c in enumerate(clean)]
    root = tmp_path / "ds" / "data"
    root.mkdir(parents=True)
    for split, rows in (("train", slice(0, 32)), ("test", slice(32, 40))):
        ds = datasets.Dataset.from_dict({"picture": images[rows], "noisy": noisy[rows].tolist(),
                                         "verified": clean[rows].tolist()}, features=features)
        ds.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    out = tmp_path / "run"
    run_job(load_config(None, [*SMALL, f"data.path={tmp_path / 'ds'}", "data.image_column=picture",
                               "data.label_column=noisy", "data.clean_label_column=verified", "data.in_memory=false",
                               f"output_dir={out}"]))
    s = _summary(out)
    assert s["noise_rate"] == pytest.approx(float(np.mean(noisy[:32] != clean[:32])))
    assert s["train_samples"] == 32 and s["test_samples"] == 8 and s["bad_images"] == 0


def test_clothing1m_run_counts_unlabelled_fifo_and_oversized_images(tmp_path, capfd):
    import os
    import signal

    from fixtures import write_lines

    layout = make_clothing1m(tmp_path / "c1m")
    train = layout.splits["train"]
    good = [p for p, _ in train if p in layout.colours]
    os.remove(good[0])
    os.mkfifo(good[0])  # a FIFO named like an image: opening it would wait forever
    # 65x64 pixels, one over the cap set below; the fixture's largest image is 64x64.
    Image.new("RGB", (65, 64), (9, 99, 199)).save(good[1], format="PNG")
    keys = layout.files["train"].read_text().splitlines()
    unlabelled = ["images/8/88/80001.jpg", "images/8/88/80002.jpg", "images/8/88/80003.jpg"]
    write_lines(layout.files["train"], keys[:3] + unlabelled + keys[3:])
    out = tmp_path / "run"

    def expire(signum, frame):
        raise TimeoutError("the run hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(240)
    try:
        run_job(load_config(None, [*SMALL, "data.format=clothing1m", f"data.root={layout.root}",
                                   f"data.max_image_pixels={64 * 64}", f"output_dir={out}"]))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    s = _summary(out)
    bad = sum(p in layout.corrupt | layout.missing for p, _ in train) + 2
    assert s["unlabelled"] == 3 and "left out 3 listed training image(s)" in capfd.readouterr().out
    assert s["train_samples"] == len(train) - bad  # listed and labelled, minus unreadable
    assert s["bad_images"] == bad + sum(p in layout.corrupt | layout.missing
                                        for split in ("val", "test") for p, _ in layout.splits[split])
