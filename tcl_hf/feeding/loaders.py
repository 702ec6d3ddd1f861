"""Loaders for image sets handed out by worker processes (lazy decoding, or the reference's PIL views)."""
from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT to the main process: a scheduler signals the whole process group,
    and a worker dying first would take the main process down before it saves its checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_loader(dataset: Dataset, num_workers: int, seed: int, **kwargs) -> DataLoader:
    """A DataLoader whose workers leave stop signals to the main process, with a private generator: starting an
    iterator draws a worker seed, and from here that draw leaves the global RNG alone, so a mid-epoch resume
    replays the same augmentations."""
    return DataLoader(dataset, num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=ignore_stop_signals, pin_memory=torch.cuda.is_available(), **kwargs)


def make_train_loader(train_set: Dataset, sampler: Sampler | None, batch_size: int, num_workers: int,
                      seed: int) -> DataLoader:
    """The training loader: shuffled (or the sampler's draw), full batches only."""
    return worker_loader(train_set, num_workers, seed, batch_size=batch_size, shuffle=sampler is None,
                         sampler=sampler, drop_last=True, persistent_workers=num_workers > 0)
