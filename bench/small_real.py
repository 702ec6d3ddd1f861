"""TCL with ``train.on_collapse=fallback`` against TCL without it and the CE baseline, on small real data (issue 23).

    python bench/small_real.py                          # every setting below, seeds 0-2
    python bench/small_real.py --settings 2k --seeds 0  # one setting, one seed
    python bench/small_real.py --smoke                  # 300 images, 3 epochs, seed 0: that the script works

Each run is ``python train.py`` in a subprocess, as a user runs it, into ``--work/<setting>/<variant>/seed<N>``; a
run whose summary.json is already there is not trained again, so an interrupted benchmark continues where it
stopped. It prints one table (mean ± sample std over the seeds, with each seed's verdict) and writes every
summary's numbers to ``--json``. The CIFAR settings need ../shared/data (real CIFAR-10 and CIFAR-10N's human
labels); without it only the quickstart runs. Accuracy only: the times in the JSON are this machine's, for the
record, and no claim is made from them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# CIFAR-10 with CIFAR-10N's "worse" human labels and a small backbone.
CIFAR = ["noise.type=cifarn", "noise.label_set=worse", "data.image_column=img", "data.label_column=label",
         "model.backbone=preact_resnet_mini", "model.proj_dim=64", "eval.knn_k=50"]
# Issue 23's setting: 32 px, batch 128, 12 epochs, the default lr, and the README's advice for small data
# (automatic warm-up, target scales at 1).
ADVISED = ["data.image_size=32", "train.batch_size=128", "train.epochs=12", "optim.warmup_epochs=auto",
           "tcl.scale1=1", "tcl.scale2=1"]
# README "Your own dataset", first row: the reference's fixed two-epoch warm-up and scales, 16 px, batch 32,
# 8 epochs at the quickstart's lr (it collapses on most seeds: BENCHMARKS.md "Outcome tests").
REFERENCE = ["data.image_size=16", "train.batch_size=32", "train.epochs=8", "optim.lr=0.1", "optim.warmup_epochs=2"]


def settings(shared: Path) -> dict[str, tuple[list[str], bool]]:
    """name -> (train.py arguments, needs ../shared/data)."""
    data = [*CIFAR, f"data.path={shared / 'cifar10'}", f"noise.file={shared / 'cifar-n' / 'CIFAR-10_human.pt'}"]
    return {"1k": ([*data, *ADVISED, "data.limit=1000"], True),
            "2k": ([*data, *ADVISED, "data.limit=2000"], True),
            "1k-reference": ([*data, *REFERENCE, "data.limit=1000"], True),
            "quickstart": (["recipes/quickstart.yaml"], False),
            "smoke": ([*data, *ADVISED, "data.limit=300", "train.epochs=3", "data.image_size=16"], True)}


VARIANTS = {"tcl": ["train.on_collapse=warn"], "tcl_fallback": ["train.on_collapse=fallback"], "ce": ["method=ce"]}
SHOWN = ("test_acc", "noise_auc")


def run(args: list[str], out: Path) -> dict:
    """Train one run (unless its summary.json exists) and return its summary."""
    summary = out / "summary.json"
    if not summary.is_file():
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
        log = out.with_suffix(".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            done = subprocess.run([sys.executable, "train.py", *args, f"output_dir={out}", "overwrite=true",
                                   "log.progress=false"], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"{out}: train.py exited with {done.returncode}; see {log}")
    return json.loads(summary.read_text())


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def table(found: dict[str, dict[str, dict[int, dict]]]) -> str:
    lines = ["| setting | run | " + " | ".join(SHOWN) + " | verdicts |", "|---|---|" + "---|" * (len(SHOWN) + 1)]
    for setting, variants in found.items():
        for variant, seeds in variants.items():
            cells = [mean_std([s[key] for s in seeds.values()]) for key in SHOWN]
            verdicts = "; ".join(f"{seed}: {s['verdict']}" for seed, s in seeds.items())
            lines.append(f"| {setting} | {variant} | " + " | ".join(cells) + f" | {verdicts} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=["1k", "2k", "1k-reference", "quickstart"],
                        choices=["1k", "2k", "1k-reference", "quickstart", "smoke"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shared", type=Path, default=SHARED, help="the folder holding cifar10/ and cifar-n/")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "small_real", help="where the runs go")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "small_real.json")
    parser.add_argument("--smoke", action="store_true", help="the smoke setting, seed 0 only")
    args = parser.parse_args()
    if args.smoke:
        args.settings, args.seeds, args.json = ["smoke"], [0], None
    found: dict[str, dict[str, dict[int, dict]]] = {}
    for setting in args.settings:
        base, needs_shared = settings(args.shared)[setting]
        if needs_shared and not (args.shared / "cifar10").is_dir():
            print(f"{setting}: skipped, {args.shared / 'cifar10'} is absent")
            continue
        for variant in args.variants:
            for seed in args.seeds:
                out = args.work / setting / variant / f"seed{seed}"
                summary = run([*base, *VARIANTS[variant], f"seed={seed}"], out)
                found.setdefault(setting, {}).setdefault(variant, {})[seed] = summary
                print(f"{setting} {variant} seed {seed}: " + "  ".join(f"{k} {summary[k]:.4f}" for k in SHOWN)
                      + f"  verdict {summary['verdict']}", flush=True)
    print(table(found))
    if args.json:
        keep = ("test_acc", "noise_auc", "label_acc", "clean_ratio_est", "noise_rate", "verdict", "tcl_from_epoch",
                "collapsed_epoch", "fallback_from_epoch", "wall_s")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({setting: {variant: {seed: {k: s.get(k) for k in keep}
                                                              for seed, s in seeds.items()}
                                                    for variant, seeds in variants.items()}
                                         for setting, variants in found.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
