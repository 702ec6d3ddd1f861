"""Label noise: the benchmark's synthetic generators (spec section 6), index-aligned label files and, in
``cifarn``, the CIFAR-N human labels.

All functions take clean labels and return a new array; the clean labels are never modified, so
the trainer can keep them beside the noisy ones for measuring detection.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError

if TYPE_CHECKING:
    from ..config import NoiseConfig
    from ..data.bundle import DataBundle

# truck->automobile, bird->airplane, deer->horse, cat<->dog (the usual CIFAR-10 asymmetric map).
CIFAR10_ASYM = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# CIFAR-100's 20 super-classes as lists of fine label indices (the dataset's published hierarchy).
CIFAR100_SUPERCLASSES = (
    (4, 30, 55, 72, 95), (1, 32, 67, 73, 91), (54, 62, 70, 82, 92), (9, 10, 16, 28, 61),
    (0, 51, 53, 57, 83), (22, 39, 40, 86, 87), (5, 20, 25, 84, 94), (6, 7, 14, 18, 24),
    (3, 42, 43, 88, 97), (12, 17, 37, 68, 76), (23, 33, 49, 60, 71), (15, 19, 21, 31, 38),
    (34, 63, 64, 66, 75), (26, 45, 77, 79, 99), (2, 11, 35, 46, 98), (27, 29, 44, 78, 93),
    (36, 50, 65, 74, 80), (47, 52, 56, 59, 96), (8, 13, 48, 58, 90), (41, 69, 81, 85, 89),
)


def cifar100_asym_map() -> dict[int, int]:
    """Each fine class to the next one (by index) within its super-class, circularly."""
    mapping = {}
    for group in CIFAR100_SUPERCLASSES:
        for i, k in enumerate(group):
            mapping[k] = group[(i + 1) % len(group)]
    return mapping


def symmetric_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Reference definition: a random `rate` share of samples get a label drawn uniformly from all
    classes (the true one included, so the flip rate is rate*(C-1)/C)."""
    rng = np.random.default_rng(seed)
    noisy = np.array(labels, dtype=np.int64, copy=True)
    # The reference relabels every position i of a permutation with i < rate*N.
    count = int(np.ceil(rate * len(noisy)))
    picked = rng.permutation(len(noisy))[:count]
    noisy[picked] = rng.integers(0, num_classes, size=count)
    return noisy


def asymmetric_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Class-dependent flips applied to a random `rate` share of all samples (CIFAR-10 or CIFAR-100)."""
    if num_classes == 10:
        mapping = CIFAR10_ASYM
    elif num_classes == 100:
        mapping = cifar100_asym_map()
    else:
        raise DataError(f"noise.type=asym: defined for 10 or 100 classes (CIFAR), the data has {num_classes}")
    rng = np.random.default_rng(seed)
    noisy = np.array(labels, dtype=np.int64, copy=True)
    picked = rng.permutation(len(noisy))[: int(rate * len(noisy))]
    noisy[picked] = [mapping.get(int(k), int(k)) for k in noisy[picked]]
    return noisy


def load_label_file(path: str | Path, full_size: int, num_classes: int, rows: np.ndarray | None) -> np.ndarray:
    """An index-aligned .npy label file for the whole training split, at the `rows` data.limit drew (None: all)."""
    path = Path(path)
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"noise.file: cannot read {str(path)!r} as a .npy array ({exc})") from None
    labels = labels.reshape(-1) if labels.ndim == 2 and 1 in labels.shape else labels
    if labels.ndim != 1:
        raise DataError(f"noise.file: {path} has shape {labels.shape}; expected one label per sample (1-D)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"noise.file: {path} holds {labels.dtype} values; expected integer class indices")
    if len(labels) != full_size:
        raise DataError(f"noise.file: {path} has {len(labels)} labels but the training split has {full_size} samples")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"noise.file: {path} has labels in [{labels.min()}, {labels.max()}]; "
                        f"allowed 0..{num_classes - 1}")
    return (labels if rows is None else labels[rows]).astype(np.int64)


def make_noisy_labels(noise_type: str, labels: np.ndarray, num_classes: int, rate: float, seed: int,
                      file: str | None = None, full_size: int | None = None, rows: np.ndarray | None = None,
                      label_set: str | None = None) -> np.ndarray:
    """The training labels the loss will see, given the dataset's labels and the noise setting; label files
    cover the whole training split, of which `rows` were drawn by data.limit (None: all, in order)."""
    if noise_type == "none":
        return np.array(labels, dtype=np.int64, copy=True)
    if noise_type == "sym":
        return symmetric_noise(labels, rate, num_classes, seed)
    if noise_type == "asym":
        return asymmetric_noise(labels, rate, num_classes, seed)
    if noise_type == "file":
        return load_label_file(file, full_size if full_size is not None else len(labels), num_classes, rows)
    if noise_type == "cifarn":
        from .cifarn import load_cifarn_labels

        noisy = load_cifarn_labels(file, label_set, labels, rows)
        # Checked here, where the class count is known: out of range, a label would fail deep in the loss.
        if noisy.size and (noisy.min() < 0 or noisy.max() >= num_classes):
            raise DataError(f"noise.file: {Path(file).name} has {label_set} labels in [{noisy.min()}, {noisy.max()}]; "
                            f"allowed 0..{num_classes - 1}")
        return noisy
    raise DataError(f"noise.type: unknown {noise_type!r}")


def training_labels(noise_cfg: NoiseConfig, data: DataBundle, seed: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """(the labels the run trains on, the true labels when known) for a loaded ``DataBundle``.

    With synthetic noise the dataset's own labels are the clean ones; otherwise only a clean column tells.
    """
    noise_seed = seed if noise_cfg.seed is None else noise_cfg.seed
    given = make_noisy_labels(noise_cfg.type, data.train_labels, data.num_classes, noise_cfg.rate, noise_seed,
                              file=noise_cfg.file, full_size=data.full_train_size, rows=data.train_indices,
                              label_set=noise_cfg.label_set)
    clean = data.clean_train_labels
    if clean is None and noise_cfg.type != "none":
        clean = data.train_labels
    return torch.as_tensor(given), clean
