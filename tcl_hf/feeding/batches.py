"""Feeding the training device: which samples each process gets, in which batches.

``DeviceBatches`` keeps an in-memory uint8 image set on the training device and cuts batches by
indexing it there: no loader, no collation, no per-step host-to-device copy. The order of an epoch
is a permutation seeded by (seed, epoch) (or the indices a sampler draws), so a resumed epoch
replays it exactly; it is cut into global batches of ``batch_size * num_processes``, and process
``r`` takes rows ``[r * batch_size, (r + 1) * batch_size)`` of each, so every sample is seen at most
once per epoch across all processes. ``shard`` splits an index range for the EM step's extraction,
where every sample must be seen exactly once.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch


def epoch_permutation(num: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(num) that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num)


class DeviceBatches:
    """Training batches of a device-resident image set: ``epoch(e, start)`` yields (images, index) on the device."""

    def __init__(self, images: torch.Tensor, usable: torch.Tensor, batch_size: int, seed: int, device,
                 process_index: int = 0, num_processes: int = 1,
                 order: Callable[[int], np.ndarray] | None = None):
        self.images = images.to(device)
        # Unreadable images never enter an epoch, so batches stay full and need no check per step.
        self.usable = np.flatnonzero(usable.cpu().numpy())
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.process_index, self.num_processes = process_index, num_processes
        self.order = order

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Every usable sample of the epoch in training order (or the sampler's draw), before sharding."""
        if self.order is not None:
            picked = np.asarray(self.order(epoch), dtype=np.int64)
            return picked[np.isin(picked, self.usable)]
        return self.usable[epoch_permutation(len(self.usable), self.seed, epoch)]

    def local_batches(self, epoch: int) -> torch.Tensor:
        """This process's sample indices for the epoch, [steps, batch_size] (the remainder is dropped)."""
        order = self.epoch_indices(epoch)
        global_batch = self.batch_size * self.num_processes
        steps = len(order) // global_batch
        grid = order[: steps * global_batch].reshape(steps, self.num_processes, self.batch_size)
        return torch.from_numpy(np.ascontiguousarray(grid[:, self.process_index]))

    def steps(self, epoch: int) -> int:
        return len(self.epoch_indices(epoch)) // (self.batch_size * self.num_processes)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images [B, C, H, W], sample indices [B]) on the device, from batch ``start`` on."""
        # One copy of the epoch's indices to the device; each step is then a gather on the device.
        local = self.local_batches(epoch).to(self.device, non_blocking=True)
        for step in range(start, local.shape[0]):
            index = local[step]
            yield self.images[index], index


def shard(num: int, process_index: int, num_processes: int) -> range:
    """The contiguous slice of range(num) one process extracts; every index in exactly one slice."""
    per = math.ceil(num / num_processes)
    return range(min(num, process_index * per), min(num, (process_index + 1) * per))


def _to_device(images, device):
    # Pinned host memory (the loader pins it on a GPU machine) lets the copy overlap the previous step.
    if isinstance(images, (list, tuple)):
        return tuple(x.to(device, non_blocking=True) for x in images)
    return images.to(device, non_blocking=True)


class LoaderBatches:
    """Training batches from a loader (lazy decoding in workers, or the reference's PIL views): the same
    ``epoch(e, start)`` as ``DeviceBatches``; unreadable images are dropped on the host, before the copy."""

    def __init__(self, loader, device, sampler=None):
        self.loader, self.device, self.sampler = loader, device, sampler

    def steps(self, epoch: int) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple]:
        from accelerate import skip_first_batches

        self.loader.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        # The sampler's order is fixed by (seed, epoch), so skipping reproduces the rest of the epoch.
        loader = skip_first_batches(self.loader, start) if start else self.loader
        for images, index, ok in loader:
            if not bool(ok.all()) and int(ok.sum()) >= 2:
                keep = ok.nonzero().squeeze(1)
                images = [x[keep] for x in images] if isinstance(images, (list, tuple)) else images[keep]
                index = index[keep]
            yield _to_device(images, self.device), index.to(self.device, non_blocking=True)
