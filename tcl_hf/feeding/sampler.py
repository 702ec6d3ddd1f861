"""Class-balanced random subsets of a training set, a new one each epoch (Clothing1M's protocol)."""
from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

# ---- class-balanced subsets (Clothing1M) ----------------------------------------------------------
def class_quotas(counts: np.ndarray, total: int) -> np.ndarray:
    """Samples to draw per class: as equal as possible, a small class gives all it has and the
    shortfall is shared among the others; sums to min(total, counts.sum())."""
    # Smallest classes first: each takes an equal share of what is left, or all it has; the
    # floor-division remainders roll on to the larger classes, so nothing is left over at the end.
    quotas = np.zeros(len(counts), dtype=np.int64)
    remaining = min(int(total), int(counts.sum()))
    order = np.argsort(counts, kind="stable")
    for rank, k in enumerate(order):
        share = remaining // (len(order) - rank)
        quotas[k] = min(int(counts[k]), share)
        remaining -= quotas[k]
    return quotas

def stratified_subset(labels: np.ndarray, num_classes: int, size: int, seed: int, epoch: int) -> np.ndarray:
    """Sorted indices of a random subset whose classes keep their proportions (an EM step on part of a huge set)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, epoch, 1])
    counts = np.bincount(labels, minlength=num_classes)
    quotas = np.floor(counts * min(1.0, size / max(len(labels), 1))).astype(np.int64)
    picked = [rng.choice(np.flatnonzero(labels == k), size=q, replace=False) for k, q in enumerate(quotas) if q]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly min(size, N) samples drawn at random, each class in proportion to its share
    (``data.limit``): unlike ``stratified_subset``, the rounding leaves no class out that the size can hold."""
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    classes, position, counts = np.unique(labels[order], return_inverse=True, return_counts=True)
    # Each sample's rank within its class, in the shuffled order.
    by_class = np.argsort(position, kind="stable")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - np.repeat(np.cumsum(counts) - counts, counts)
    # The k-th sample of a class of n comes due at (k + 0.5) / n: taking the earliest dues takes every class at
    # the same pace, i.e. in proportion (rounded to nearest); equal dues are taken in the shuffled order.
    due = (rank + 0.5) / counts[position]
    return np.sort(order[np.argsort(due, kind="stable")[:size]])


def balanced_subset(labels: np.ndarray, num_classes: int, samples_per_epoch: int, seed: int, epoch: int) -> np.ndarray:
    """Shuffled indices of a class-balanced random subset, the same for the same (seed, epoch)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, epoch])
    quotas = class_quotas(np.bincount(labels, minlength=num_classes), samples_per_epoch)
    picked = [rng.choice(np.flatnonzero(labels == k), size=q, replace=False) for k, q in enumerate(quotas) if q]
    return rng.permutation(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)

class BalancedSubsetSampler(Sampler):
    """A new class-balanced random subset of the training set each epoch (``set_epoch``).

    Every process draws the same indices for the same epoch, so accelerate can shard the batches.
    """

    def __init__(self, labels, num_classes: int, samples_per_epoch: int, seed: int = 0):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes, self.samples_per_epoch, self.seed = num_classes, samples_per_epoch, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return min(self.samples_per_epoch, len(self.labels))

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return balanced_subset(self.labels, self.num_classes, self.samples_per_epoch, self.seed, epoch)

    def __iter__(self):
        return iter(self.epoch_indices(self.epoch).tolist())
