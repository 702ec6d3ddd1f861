"""Does the fast path change what TCL learns? The same short CIFAR-10 run twice, same seed and label file:

    python bench/accuracy_ab.py --data-path /data/cifar10 --labels sym_noise_cifar10_50.npy
    python bench/accuracy_ab.py --smoke --data-path ../shared/data/cifar10 --labels ../shared/data/tcl-noise/sym_noise_cifar10_50.npy

"fast": images on the device, batched views, bf16 and torch.compile on a GPU, the GMM in torch. "reference-style":
the reference's PIL views in loader workers, fp32, no compilation, scikit-learn's GMM. Both follow the paper
recipe (recipes/cifar10_sym50.yaml) at a total batch of 1024, shortened to --epochs with --warmup warm-up
epochs. Printed: test accuracy, noise AUC, label accuracy and wall time of each, and whether the differences
stay within 1.0 accuracy point and 0.01 AUC.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

# Measure this checkout, whichever copy of tcl_hf is installed.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tcl_hf.config import load_config  # noqa: E402
from tcl_hf.trainer import Trainer  # noqa: E402

ACC_POINTS, AUC_GAP = 1.0, 0.01


def run(overrides: list[str]) -> dict:
    from accelerate.state import AcceleratorState, GradientState

    # Each run starts from a fresh accelerate state (precision, compilation), as in its own process.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    summary = Trainer(load_config(REPO / "recipes" / "cifar10_sym50.yaml", overrides)).train()
    return {key: summary.get(key) for key in ("test_acc", "noise_auc", "label_acc", "knn_acc", "wall_s",
                                              "samples_per_s")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", required=True, help="CIFAR-10 in hub layout")
    parser.add_argument("--labels", required=True, help="the reference's sym_noise_cifar10_50.npy")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on 2,048 images, 2 epochs: a CPU check")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    epochs, warmup = (2, 1) if args.smoke else (args.epochs, args.warmup)
    workers = min(15, max(1, (os.cpu_count() or 2) - 1))
    results: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "epochs": epochs, "warmup": warmup}
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"data.path={args.data_path}", "noise.type=file", f"noise.file={args.labels}",
                  f"train.epochs={epochs}", f"optim.warmup_epochs={warmup}", "log.progress=false",
                  f"train.batch_size={64 if args.smoke else 1024}", "seed=0"]
        if args.smoke:
            common += ["data.limit=2048", "model.backbone=preact_resnet_mini", "eval.knn_k=20"]
        configs = {
            "fast": ["data.on_device=null", "aug.pipeline=batched", "tcl.gmm_backend=torch", "train.compile=null",
                     f"train.mixed_precision={'bf16' if cuda else 'no'}", "data.num_workers=0"],
            "reference-style": ["data.on_device=false", "aug.pipeline=pil", "tcl.gmm_backend=sklearn",
                                "train.compile=false", "train.mixed_precision=no", f"data.num_workers={workers}"],
        }
        for name, overrides in configs.items():
            results[name] = run([*common, *overrides, f"output_dir={Path(tmp) / name}"])
    fast, ref = results["fast"], results["reference-style"]
    results["test_acc_diff_points"] = 100 * (fast["test_acc"] - ref["test_acc"])
    results["noise_auc_diff"] = fast["noise_auc"] - ref["noise_auc"]
    results["within_tolerance"] = (abs(results["test_acc_diff_points"]) <= ACC_POINTS
                                   and abs(results["noise_auc_diff"]) <= AUC_GAP)
    print(f"device: {results['device']}; {epochs} epochs ({warmup} warm-up), same seed and label file")
    print(f"{'path':<16} {'test acc':>9} {'noise AUC':>10} {'label acc':>10} {'wall s':>8}")
    for name in ("fast", "reference-style"):
        r = results[name]
        print(f"{name:<16} {r['test_acc']:>9.4f} {r['noise_auc']:>10.4f} {r['label_acc']:>10.4f} {r['wall_s']:>8.0f}")
    print(f"difference: {results['test_acc_diff_points']:+.2f} accuracy points, {results['noise_auc_diff']:+.4f} AUC "
          f"({'within' if results['within_tolerance'] else 'OUTSIDE'} {ACC_POINTS} point / {AUC_GAP} AUC)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
