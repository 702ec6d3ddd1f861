"""What a run found: the per-sample label-issue table and the plots that explain detection and training.

``label_issues`` ranks every training sample by its suspicion score (most suspect first);
``make_plots`` draws the clean-probability distribution and the per-epoch curves of metrics.jsonl.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
# Figure without pyplot draws with the Agg canvas and leaves the user's global matplotlib backend alone.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import detector
from .errors import TCLError
from .rundir import FELL_BACK_KEY, LABEL_ISSUES_FILE, PLOTS_DIR, read_metrics


def _names_are_informative(class_names: list[str] | None) -> bool:
    # Datasets without a ClassLabel get names "0", "1", ...: columns of those would repeat the label ids.
    return bool(class_names) and list(class_names) != [str(k) for k in range(len(class_names))]


def label_issues(given: np.ndarray, predicted: np.ndarray, clean_prob: np.ndarray, clean: np.ndarray | None = None,
                 class_names: list[str] | None = None, *, suspicion: np.ndarray | None = None,
                 sample_id: np.ndarray | None = None, trained: np.ndarray | None = None) -> pd.DataFrame:
    """One row per training sample, most suspect first: sorted by ``suspicion`` descending (ties by index).

    Columns: index (row of the training split), sample_id (the dataset's own id, when given), given_label,
    predicted_label, suspicion (``detector.suspicion``; without it ``1 - clean_prob``), clean_prob, is_noisy
    (clean_prob < ``detector.CLEAN_THRESHOLD``), trained_label when the method trained on other labels than the
    given ones (TCL+'s relabelled), clean_label when known, and the ``*_name`` of each label column when the
    dataset names its classes.
    """
    given, predicted = np.asarray(given, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    clean_prob = np.asarray(clean_prob, dtype=np.float64)
    suspicion = 1.0 - clean_prob if suspicion is None else np.asarray(suspicion, dtype=np.float64)
    lengths = {len(given), len(predicted), len(clean_prob), len(suspicion)}
    lengths |= {len(a) for a in (clean, sample_id) if a is not None}
    if len(lengths) != 1:
        raise ValueError("given, predicted, clean_prob (and suspicion, sample_id, clean) must have one entry per "
                         "training sample")
    table = {"index": np.arange(len(given))}
    if sample_id is not None:
        table["sample_id"] = np.asarray(sample_id)
    table |= {"given_label": given, "predicted_label": predicted, "suspicion": suspicion, "clean_prob": clean_prob,
              "is_noisy": clean_prob < detector.CLEAN_THRESHOLD}
    label_columns = ["given", "predicted"]
    if trained is not None:
        table["trained_label"] = np.asarray(trained, dtype=np.int64)
        label_columns.append("trained")
    if clean is not None:
        table["clean_label"] = np.asarray(clean, dtype=np.int64)
        label_columns.append("clean")
    if _names_are_informative(class_names):
        # Categorical: codes into one list of the distinct names, not a Python string per row (1M rows, 3 columns).
        # Distinct, because two classes may share a name (ImageNet's and WebVision's two "crane"s).
        distinct, of_class = np.unique(np.asarray([str(name) for name in class_names]), return_inverse=True)
        for column in label_columns:
            table[f"{column}_name"] = pd.Categorical.from_codes(of_class[table[f"{column}_label"]], categories=distinct)
    frame = pd.DataFrame(table)
    order = np.lexsort((frame["index"].to_numpy(), -suspicion))
    return frame.iloc[order].reset_index(drop=True)


def write_label_issues(output_dir: str | Path, issues: pd.DataFrame) -> Path:
    """Write the table to ``<output_dir>/label_issues.csv``; returns the path."""
    path = Path(output_dir) / LABEL_ISSUES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    issues.to_csv(path, index=False)
    return path


def load_label_issues(output_dir: str | Path) -> pd.DataFrame:
    """The label-issue table of a finished run, most suspect samples first."""
    path = Path(output_dir) / LABEL_ISSUES_FILE
    if not path.is_file():
        raise TCLError(f"{path} does not exist; make it for a finished run with: python -m tcl_hf.export {output_dir}")
    return pd.read_csv(path)


def clean_prob_groups(clean_prob: np.ndarray, given: np.ndarray, clean: np.ndarray | None = None, class_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Clean probabilities split by whether the given label is truly clean, or by given class when unknown."""
    clean_prob, given = np.asarray(clean_prob, dtype=np.float64), np.asarray(given)
    if clean is not None:
        truly_clean = given == np.asarray(clean)
        return {"truly clean": clean_prob[truly_clean], "truly noisy": clean_prob[~truly_clean]}
    names = class_names or []
    return {f"given {names[k] if k < len(names) else k}": clean_prob[given == k] for k in np.unique(given)}


def _plot_clean_prob(path: Path, groups: dict[str, np.ndarray], split_by_truth: bool) -> Path:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 41)
    for name, values in groups.items():
        ax.hist(values, bins=bins, histtype="step" if not split_by_truth else "stepfilled",
                alpha=0.5 if split_by_truth else 1.0, label=f"{name} ({len(values)})")
    ax.axvline(detector.CLEAN_THRESHOLD, color="black", linestyle="--", linewidth=1, label="noisy below")
    ax.set_xlabel("clean probability of the given label")
    ax.set_ylabel("training samples")
    ax.set_title("Noise detection: clean probability" + (" by true label status" if split_by_truth
                                                           else " by given class"))
    ax.legend(fontsize="small", ncol=1 if len(groups) <= 6 else 2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _series(records: list[dict], key: str) -> tuple[list, list]:
    points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and "epoch" in r]
    return [p[0] for p in points], [p[1] for p in points]


def _plot_curves(path: Path, records: list[dict]) -> Path:
    fig = Figure(figsize=(10, 4))
    acc_ax, det_ax = fig.subplots(1, 2)
    # A run that fell back to CE trained some epochs twice: the CE ones are drawn dashed beside TCL's.
    phases = [(" (CE after the fallback)", "--", [r for r in records if r.get(FELL_BACK_KEY)]),
              ("", "-", [r for r in records if not r.get(FELL_BACK_KEY)])]
    for ax, keys in ((acc_ax, (("test_acc", "test accuracy"), ("knn_acc", "kNN accuracy"))),
                     (det_ax, (("noise_auc", "noise AUC"), ("clean_ratio_est", "estimated clean ratio")))):
        for key, label in keys:
            for suffix, style, part in phases:
                epochs, values = _series(part, key)
                if values:
                    ax.plot(epochs, values, marker="o", linestyle=style, label=label + suffix)
    for ax, title in ((acc_ax, "Accuracy"), (det_ax, "Noise detection")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_ylim(0.0, 1.02)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def make_plots(output_dir: str | Path, clean_prob: np.ndarray, given: np.ndarray, clean: np.ndarray | None = None,
               class_names: list[str] | None = None) -> list[Path]:
    """Write ``<output_dir>/plots/clean_prob.png`` and, when metrics.jsonl has epochs, ``curves.png``."""
    plots = Path(output_dir) / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    groups = clean_prob_groups(clean_prob, given, clean, class_names)
    paths = [_plot_clean_prob(plots / "clean_prob.png", groups, split_by_truth=clean is not None)]
    records = read_metrics(output_dir)
    if records:
        paths.append(_plot_curves(plots / "curves.png", records))
    return paths
