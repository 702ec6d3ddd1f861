"""CIFAR-10N / CIFAR-100N human label sets (Wei et al., ICLR 2022) from their published .pt files.

Each file is a dict of label arrays in the canonical CIFAR train order, with the clean labels
alongside; those are compared with the dataset's labels before any noisy label is used, so a file
paired with the wrong dataset, or a dataset in another order, is refused instead of silently
scrambling the labels.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DataError

# label_set name -> key in the .pt file.
LABEL_SETS = {
    "aggre": "aggre_label",
    "worse": "worse_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
    "noisy": "noisy_label",
}


def _safe_globals() -> list:
    """What a pickled integer numpy array is made of, and nothing else: unpickling may then build
    arrays, but never call anything a crafted file names (os.system, open, ...)."""
    # numpy 2 moved numpy.core to numpy._core; the published CIFAR-N files (numpy 1) name the old path.
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    integer_dtypes = [type(np.dtype(t)) for t in (np.int8, np.int16, np.int32, np.int64,
                                                  np.uint8, np.uint16, np.uint32, np.uint64)]
    return [(core._reconstruct, "numpy.core.multiarray._reconstruct"),
            (core._reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *integer_dtypes]


def _refusal(exc: Exception) -> str | None:
    """What the weights-only unpickler refused to call or build (e.g. 'unsupported GLOBAL posix.system'), or None
    for other failures (not a pickle, truncated)."""
    text = str(exc)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        return f"unsupported GLOBAL {found.group(1)}"
    if found := re.search(r"Can only build .*? but got (<class '[\w.]+'>)", text):
        return f"Can only build integer arrays, got {found.group(1)}"
    return None


def _detail(exc: Exception) -> str:
    """The reason of a failed load in one line. torch's weights-only message wraps its reason (after
    'WeightsUnpickler error:', when given) in advice to load the file unsafely, which is never repeated."""
    text = str(exc)
    if text.startswith("Weights only load failed"):
        _, _, text = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _read(path: Path) -> dict:
    import torch

    try:
        if path.stat().st_size == 0:
            raise DataError(f"noise.file: {str(path)!r} is an empty file (0 bytes); expected CIFAR-10_human.pt or "
                            f"CIFAR-100_human.pt")
        # weights_only: a .pt is a pickle, and a pickle may run code while it loads; only numpy
        # integer arrays, lists and dicts are let through, before any check sees the content.
        with torch.serialization.safe_globals(_safe_globals()):
            content = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"noise.file: {str(path)!r} does not exist") from None
    except DataError:
        raise
    except Exception as exc:  # torch.load raises many types for a file that is not a torch pickle
        refusal = _refusal(exc)
        if refusal is not None:
            raise DataError(f"noise.file: {str(path)!r} holds more than label arrays ({refusal}); refused "
                            f"without running it — a CIFAR-N file holds only integer arrays and lists") from None
        raise DataError(f"noise.file: cannot read {str(path)!r} with torch.load ({_detail(exc)})") from None
    if not isinstance(content, dict) or "clean_label" not in content:
        raise DataError(f"noise.file: {path} is not a CIFAR-N label file (expected a dict with 'clean_label' "
                        f"and noisy label arrays)")
    return content


def _label_array(content: dict, key: str, path: Path) -> np.ndarray:
    """One label set of the file as int64; a non-integer or out-of-int64 entry is named, not a traceback."""
    try:
        labels = np.asarray(content[key])
        if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(f"{labels.dtype} values of shape {labels.shape}")
        return labels.astype(np.int64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"noise.file: {path.name}[{key!r}] is not a list of integer labels in the int64 range "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def describe(content: dict) -> str:
    """What a CIFAR-N file appears to be for, from its keys and clean labels."""
    classes = int(np.max(content["clean_label"])) + 1
    if "aggre_label" in content:
        name = "CIFAR-10N (CIFAR-10 train)"
    elif "noisy_label" in content:
        name = "CIFAR-100N (CIFAR-100 train)"
    else:
        name = "an unknown label set"
    return f"{name}, {len(content['clean_label'])} samples, {classes} classes"


def load_cifarn_labels(path: str | Path, label_set: str, dataset_labels: np.ndarray,
                       rows: np.ndarray | None = None) -> np.ndarray:
    """The noisy labels of `label_set` (int64) at the training split's `rows` (data.limit's draw; None: all).

    `dataset_labels` are the training split's labels as loaded (those of `rows`); the file's clean labels
    at the same rows must equal them position by position.
    """
    path = Path(path)
    content = _read(path)
    clean = _label_array(content, "clean_label", path)
    ours = np.asarray(dataset_labels, dtype=np.int64)
    if rows is None and len(ours) != len(clean):
        raise DataError(f"noise.file: {path.name} has {len(clean)} labels but the training split has {len(ours)} "
                        f"samples")
    if rows is not None and len(rows) and rows.max() >= len(clean):
        raise DataError(f"noise.file: {path.name} has {len(clean)} labels but data.limit drew row {rows.max()} of "
                        f"the training split; the file must hold one label per training sample")
    rows = np.arange(len(clean)) if rows is None else rows
    wrong = int(np.count_nonzero(clean[rows] != ours))
    if wrong:
        raise DataError(f"noise.file: the clean labels in {path.name} disagree with the dataset's at {wrong} of "
                        f"{len(ours)} positions; the file appears to be for {describe(content)} in the canonical "
                        f"train order — use it with that dataset, in that order")
    # Checked after the dataset match: a file for another dataset is the more basic mistake.
    offered = [name for name, key in LABEL_SETS.items() if key in content]
    if label_set not in offered:
        raise DataError(f"noise.label_set: {label_set!r} is not in {path.name}; this file offers: {', '.join(offered)}")
    noisy = _label_array(content, LABEL_SETS[label_set], path)
    if len(noisy) != len(clean):
        raise DataError(f"noise.file: {path.name} has {len(clean)} clean but {len(noisy)} {label_set} labels")
    return noisy[rows]
