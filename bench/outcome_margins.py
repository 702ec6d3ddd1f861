"""The margins of the tests that assert a training outcome, over seeds (issue 22).

    python bench/outcome_margins.py                       # every case, seeds 0-4
    python bench/outcome_margins.py --cases short_run --seeds 0 1 2
    python bench/outcome_margins.py --json bench/results/outcome_margins.json

A test that asserts an outcome (an AUC, an accuracy, a collapse firing, one run beating another) must hold on
every machine, whose float rounding differs. Seeds stand in for that: each case here runs its test's own
settings (imported from the test module, so the two never drift apart) with seeds 0..4 and prints, per check,
the value of every seed, the worst one, the threshold and the margin. For a check against chance the margin is
the worst value's distance past the threshold as a share of the room on the nearer side of the threshold: the
distance to chance, or to the best possible value when that is closer (an AUC above 0.95 cannot pass by more
than 0.05). The rule (tests/README.md) asks for at least 25 %. A comparison between runs prints its worst gap. ``short_run`` also
runs two broken trainers and shows that its checks fail on them.

Cases that need ../shared/data are skipped without it. Times are not measured here.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from conftest import SHARED_DATA, reset_accelerate  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from tcl_hf.config import load_config  # noqa: E402
from tcl_hf.job import run_job  # noqa: E402

REQUIRED_MARGIN = 0.25


def check_margin(worst: float, threshold: float, chance: float, best: float) -> float:
    """How far past its threshold the worst value lies, as a share of the room between the threshold and the
    nearer of chance and the best possible value."""
    return (worst - threshold) / min(abs(threshold - chance), abs(best - threshold)) * (1 if best > chance else -1)


def short_run(seed: int, work: Path) -> dict:
    import test_training as t

    values = {}
    for bug in (None, "shuffled_labels", "no_optimizer_step"):
        reset_accelerate()
        out = work / f"short_{bug}_{seed}"
        with t.planted_bug(bug) if bug else contextlib.nullcontext():
            run_job(load_config(None, [*t.SHORT_RUN, f"seed={seed}", f"output_dir={out}"]))
        outcome = t.short_run_outcome(out)
        if bug is None:
            values.update(outcome)
        else:
            values[f"{bug} fails"] = bool(t.short_run_failures(outcome))
            values.update({f"{bug}: {k}": v for k, v in outcome.items()})
    return values


SHORT_RUN_CHECKS = [("loss_ratio", 0.95, 1.0, 0.0), ("noise_auc", 0.7, 0.5, 1.0), ("knn_acc", 0.6, 0.1, 1.0)]


def auto_switch(seed: int, work: Path) -> dict:
    import test_health as t

    reset_accelerate()
    summary = t._train(work / f"auto_{seed}", f"seed={seed}")
    return {"tcl_from_epoch": summary["tcl_from_epoch"]}


def plus_chain(seed: int, work: Path) -> dict:
    import test_plus as t

    reset_accelerate()
    chain = t.make_chain(work / f"tcl_{seed}", work / f"plus_{seed}", seed)
    given = chain.trainer.given_labels.cpu()
    changed = int((chain.trainer.train_labels.cpu() != given).sum())
    return {"relabel_acc gain": chain.plus["relabel_acc"] - chain.tcl["label_acc"], "relabelled share": changed / len(given)}


def collapse_real(seed: int, work: Path) -> dict:
    import test_collapse_real as t

    runs = t.budget_runs(SHARED_DATA / "cifar10", SHARED_DATA / "cifar-n" / "CIFAR-10_human.pt", work / f"real_{seed}",
                         seed)
    collapse, ref, quick, ce = (runs[name] for name in ("collapse", "reference", "quickstart", "ce"))
    tcl_epochs = [r for r in quick["records"] if r["epoch"] >= quick["summary"]["tcl_from_epoch"]]
    return {"lr 1.6: fires at epoch": collapse["records"][-1]["epoch"] if collapse["stopped"] else None,
            "lr 1.6: entropy ratio at stop": collapse["records"][-1]["pred_entropy_ratio"],
            "lr 0.1, reference: fires": ref["stopped"] is not None,
            "lr 0.1, reference: last entropy ratio": ref["records"][-1]["pred_entropy_ratio"],
            "lr 0.1, guards: tcl_from_epoch": quick["summary"]["tcl_from_epoch"],
            "lr 0.1, guards: fires": quick["summary"]["collapsed_epoch"] is not None,
            "lr 0.1, guards: min entropy ratio": min(r["pred_entropy_ratio"] for r in tcl_epochs),
            "lr 0.1, guards - reference: noise_auc": quick["summary"]["noise_auc"] - ref["records"][-1]["noise_auc"],
            "lr 0.1, guards - CE: test_acc": quick["summary"]["test_acc"] - ce["summary"]["test_acc"],
            "lr 0.1, guards - CE: noise_auc": quick["summary"]["noise_auc"] - ce["summary"]["noise_auc"]}


def fallback(seed: int, work: Path) -> dict:
    import test_fallback as t

    # With warn the run trains on past the line, so every TCL epoch's spread is there to see.
    out = work / f"fallback_{seed}"
    with contextlib.redirect_stdout(sys.stderr):
        summary = t._train(out, f"seed={seed}", "train.on_collapse=warn")
    spread = {r["epoch"]: r["pred_entropy_ratio"] for r in t._records(out)}
    return {"fires at epoch": summary["collapsed_epoch"], "first TCL epoch's spread": spread[3],
            "lowest spread, epochs 3-6": min(spread[e] for e in (3, 4, 5, 6))}


def planted_features(seed: int, work: Path) -> dict:
    import test_detector as t
    from tcl_hf.detector import em_step, prediction_confidences

    values = {}
    for per_class in (False, True):
        z, p, given, is_clean = t.planted_noise(seed=seed)
        em = em_step(z, p, given, temperature=0.25, per_class=per_class)
        values[f"em auc (per_class={per_class})"] = roc_auc_score(is_clean, em.confidences.numpy())
        values[f"em clean_ratio error (per_class={per_class})"] = abs(em.clean_ratio - 0.7)
    z, p, given, is_clean = t.planted_noise(seed=seed)
    values["prediction auc"] = roc_auc_score(is_clean, prediction_confidences(p, given).numpy())
    return values


# case -> (function, needs shared data, checks: (value, threshold, chance, best possible); chance None for a
# comparison between runs)
CASES = {
    "short_run": (short_run, False, SHORT_RUN_CHECKS),
    "auto_switch": (auto_switch, False, []),
    "plus_chain": (plus_chain, False, [("relabel_acc gain", 0.0, None, None)]),
    # Only the first two rows are a test's (it fires at epoch 2); the rest are issue 11's comparisons, measured here
    # because no threshold on them holds over seeds.
    "collapse_real": (collapse_real, True, [("lr 1.6: entropy ratio at stop", 0.5, 1.0, 0.0)]),
    "fallback": (fallback, False, [("lowest spread, epochs 3-6", 0.5, 1.0, 0.0)]),
    "planted_features": (planted_features, False, [("em auc (per_class=False)", 0.95, 0.5, 1.0),
                                                   ("em auc (per_class=True)", 0.95, 0.5, 1.0),
                                                   ("prediction auc", 0.95, 0.5, 1.0),
                                                   ("em clean_ratio error (per_class=False)", 0.05, 0.3, 0.0),
                                                   ("em clean_ratio error (per_class=True)", 0.05, 0.3, 0.0)]),
}


def table(case: str, per_seed: dict[int, dict], checks) -> list[str]:
    lines = [f"\n{case} (seeds {', '.join(map(str, per_seed))})"]
    limits = {name: (threshold, chance, best) for name, threshold, chance, best in checks}
    for key in next(iter(per_seed.values())):
        values = [per_seed[s][key] for s in per_seed]
        shown = " ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)
        line = f"  {key:45s} {shown}"
        if key in limits:
            threshold, chance, best = limits[key]
            above = chance is None or best > chance
            worst = min(values) if above else max(values)
            line += f"   worst {worst:.3f} {'>' if above else '<'} {threshold}"
            if chance is not None:
                margin = check_margin(worst, threshold, chance, best)
                line += f", margin {margin:.0%}{'' if margin >= REQUIRED_MARGIN else '  <-- below the rule'}"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--json", type=Path, help="also write every value here")
    args = parser.parse_args()
    found = {}
    with tempfile.TemporaryDirectory() as work:
        for case in args.cases:
            function, shared, checks = CASES[case]
            if shared and not SHARED_DATA.exists():
                print(f"\n{case}: skipped, {SHARED_DATA} is absent")
                continue
            found[case] = {seed: function(seed, Path(work)) for seed in args.seeds}
            print("\n".join(table(case, found[case], checks)), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
