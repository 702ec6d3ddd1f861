"""Loaders for image sets handed out by datasets (decoded in worker processes when they are lazy)."""
from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader

from ..errors import DataError
from .bundle import DataBundle


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT to the main process: a scheduler signals the whole process group,
    and a worker dying first would take the main process down before it saves its checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loaders(data: DataBundle, train_cfg, num_workers: int, num_processes: int,
                 seed: int) -> tuple[DataLoader, DataLoader, dict[str, DataLoader]]:
    """(training batches, the training set in order for the EM step, every held-out set in order)."""
    n = len(data.train)
    if n < train_cfg.batch_size * num_processes:
        raise DataError(f"train.batch_size: {train_cfg.batch_size} per process x {num_processes} process(es) exceeds "
                        f"the {n} training samples; lower train.batch_size")
    eval_batch = train_cfg.eval_batch_size or 2 * train_cfg.batch_size

    def loader(dataset, **kwargs) -> DataLoader:
        # A private generator: starting an iterator draws a worker seed, and from here that draw leaves
        # the global RNG alone, so a mid-epoch resume replays the same augmentations.
        return DataLoader(dataset, num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
                          worker_init_fn=ignore_stop_signals, **kwargs)

    sampler = data.train_sampler
    train = loader(data.train, batch_size=train_cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                   drop_last=True, pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)
    evals = {name: loader(dataset, batch_size=eval_batch, shuffle=False) for name, (dataset, _) in data.eval_sets.items()}
    return train, loader(data.train, batch_size=eval_batch, shuffle=False), evals
