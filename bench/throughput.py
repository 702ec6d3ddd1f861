"""A whole TCL training epoch, end to end, in two configurations of the same model on the same machine.

    python bench/throughput.py --smoke                       # this CPU, a tiny model: a few minutes
    python bench/throughput.py --data-path /data/cifar10     # real CIFAR-10 (hub layout), else synthetic images
    python bench/throughput.py --batch 1024 --out bench/results/throughput.json

"ours": images kept on the training device, the views in batched kernels, bf16 and torch.compile on a GPU,
the EM step's GMM in torch. "reference-style": the reference's recipe — fp32, the three views made with PIL
in loader workers, scikit-learn's GMM class by class. Both train PreAct ResNet-18 (preact_resnet_mini with
--smoke) with TCL, per-class GMM, at the same total batch.

Each configuration runs one untimed epoch (warm-up, compilation), then one timed epoch: every training step,
the EM step over the whole training set and the evaluation of the test set. Printed: samples/s (training
samples per second of the whole epoch), the EM step's share of the epoch, peak device memory, and the ratio
ours / reference-style. Absolute numbers mean something on a GPU only; on a CPU, read the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Measure this checkout, whichever copy of tcl_hf is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcl_hf.config import load_config  # noqa: E402
from tcl_hf.trainer import Trainer  # noqa: E402


def synthetic_cifar(root: Path, train: int, test: int, size: int = 32, classes: int = 10) -> Path:
    """A hub-layout parquet dataset of random images (PNG, as CIFAR-10's hub copy), one class per image block."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"c{k}" for k in range(classes)])})
    for split, n in (("train", train), ("test", test)):
        pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, classes, n)
        ds = datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels], "label": labels.tolist()},
                                        features=features)
        (root / "plain_text").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "plain_text" / f"{split}-00000-of-00001.parquet"))
    return root


def configurations(cuda: bool, workers: int) -> dict[str, list[str]]:
    return {
        "ours": ["data.on_device=null", "aug.pipeline=batched", "tcl.gmm_backend=torch",
                 f"train.mixed_precision={'bf16' if cuda else 'no'}", "train.compile=null", "data.num_workers=0"],
        "reference-style": ["data.on_device=false", "aug.pipeline=pil", "tcl.gmm_backend=sklearn",
                            "train.mixed_precision=no", "train.compile=false", f"data.num_workers={workers}"],
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(overrides: list[str]) -> dict:
    """One warm-up epoch, then one timed epoch of training steps, EM step and test evaluation."""
    from accelerate.state import AcceleratorState, GradientState

    # Each configuration starts from a fresh accelerate state (precision, compilation), as in its own process.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    trainer = Trainer(load_config(None, overrides))
    device = trainer.accelerator.device
    trainer.detect_noise()
    trainer.train_epoch(1)
    trainer.detect_noise(1)
    trainer.evaluate()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    samples_before = trainer.state.samples
    trainer.train_epoch(2)
    sync(device)
    em_started = time.perf_counter()
    trainer.detect_noise(2)
    sync(device)
    em_seconds = time.perf_counter() - em_started
    trainer.evaluate()
    sync(device)
    seconds = time.perf_counter() - started
    samples = trainer.state.samples - samples_before
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"samples_per_s": samples / seconds, "epoch_s": seconds, "em_share": em_seconds / seconds,
            "peak_gib": peak, "samples": samples, "on_device": trainer.feed.on_device}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model and data, for a CPU")
    parser.add_argument("--data-path", help="CIFAR-10 in hub layout; default: synthetic images")
    parser.add_argument("--batch", type=int, help="total batch (one process); default 1024, 64 with --smoke")
    parser.add_argument("--samples", type=int, help="synthetic training images; default 50,000, 1,024 with --smoke")
    parser.add_argument("--workers", type=int, help="loader workers of the reference-style configuration")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    batch = args.batch or (64 if args.smoke else 1024)
    workers = args.workers if args.workers is not None else min(15, max(1, (os.cpu_count() or 2) - 1))
    results: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "batch": batch}
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_path:
            data, limit = args.data_path, ["data.limit=2048"] if args.smoke else []
        else:
            train = args.samples or (1024 if args.smoke else 50_000)
            data, limit = str(synthetic_cifar(Path(tmp) / "synthetic", train, max(256, train // 5))), []
        common = [f"data.path={data}", "data.image_column=img", "data.label_column=label", *limit,
                  f"model.backbone={'preact_resnet_mini' if args.smoke else 'preact_resnet18_cifar'}",
                  f"train.batch_size={batch}", "train.epochs=200", "optim.warmup_epochs=1", "tcl.per_class_gmm=true",
                  "noise.type=sym", "noise.rate=0.5", "log.progress=false", "eval.knn_k=200"]
        for name, overrides in configurations(cuda, workers).items():
            results[name] = measure([*common, *overrides, f"output_dir={Path(tmp) / name}"])
    ours, ref = results["ours"], results["reference-style"]
    results["ratio"] = ours["samples_per_s"] / ref["samples_per_s"]
    print(f"device: {results['device']} (numbers from one run on this machine; on a CPU only the ratio means much)")
    print(f"{'configuration':<18} {'samples/s':>10} {'epoch s':>8} {'EM share':>9} {'peak GiB':>9}")
    for name in ("ours", "reference-style"):
        r = results[name]
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        print(f"{name:<18} {r['samples_per_s']:>10,.0f} {r['epoch_s']:>8.1f} {r['em_share']:>8.1%} {peak:>9}")
    print(f"ratio ours / reference-style: {results['ratio']:.2f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
