"""CIFAR-10N / CIFAR-100N human label sets (Wei et al., ICLR 2022) from their published .pt files.

Each file is a dict of label arrays in the canonical CIFAR train order, with the clean labels
alongside; those are compared with the dataset's labels before any noisy label is used, so a file
paired with the wrong dataset, or a dataset in another order, is refused instead of silently
scrambling the labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

# label_set name -> key in the .pt file.
LABEL_SETS = {
    "aggre": "aggre_label",
    "worse": "worse_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
    "noisy": "noisy_label",
}


def _read(path: Path) -> dict:
    import torch

    try:
        content = torch.load(path, weights_only=False)
    except FileNotFoundError:
        raise DataError(f"noise.file: {str(path)!r} does not exist") from None
    except Exception as exc:  # torch.load raises many types for a file that is not a torch pickle
        raise DataError(f"noise.file: cannot read {str(path)!r} with torch.load ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(content, dict) or "clean_label" not in content:
        raise DataError(f"noise.file: {path} is not a CIFAR-N label file (expected a dict with 'clean_label' "
                        f"and noisy label arrays)")
    return content


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
                       limit: int | None = None) -> np.ndarray:
    """The noisy labels of `label_set` (int64), cut to the first `limit` like the data.

    `dataset_labels` are the training split's labels as loaded (already cut to `limit`); the file's
    clean labels must equal them position by position.
    """
    path = Path(path)
    content = _read(path)
    clean = np.asarray(content["clean_label"], dtype=np.int64)
    ours = np.asarray(dataset_labels, dtype=np.int64)
    expected = len(clean) if limit is None else min(limit, len(clean))
    if len(ours) != expected:
        raise DataError(f"noise.file: {path.name} has {len(clean)} labels but the training split has {len(ours)} "
                        f"samples" + (f" (after data.limit={limit})" if limit is not None else ""))
    wrong = int(np.count_nonzero(clean[:expected] != ours))
    if wrong:
        raise DataError(f"noise.file: the clean labels in {path.name} disagree with the dataset's at {wrong} of "
                        f"{expected} positions; the file appears to be for {describe(content)} in the canonical "
                        f"train order — use it with that dataset, in that order")
    # Checked after the dataset match: a file for another dataset is the more basic mistake.
    offered = [name for name, key in LABEL_SETS.items() if key in content]
    if label_set not in offered:
        raise DataError(f"noise.label_set: {label_set!r} is not in {path.name}; this file offers: {', '.join(offered)}")
    noisy = np.asarray(content[LABEL_SETS[label_set]], dtype=np.int64)
    if len(noisy) != len(clean):
        raise DataError(f"noise.file: {path.name} has {len(clean)} clean but {len(noisy)} {label_set} labels")
    return noisy[:expected]
