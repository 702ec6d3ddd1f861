"""What a run will do, in the one line it starts with (and ``train.py --dry-run`` prints): the samples and classes
it trains on, its epochs, the warm-up rule and the lr it derives from ``optim.lr`` and the total batch."""
from __future__ import annotations

from .config import Config
from .optim import scaled_lr
from .schedule import warmup_text


def total_batch(cfg: Config, num_processes: int) -> int:
    """Images per optimizer step over every process (the batch ``optim.lr`` is scaled by)."""
    return cfg.train.batch_size * num_processes * cfg.train.grad_accum_steps


def lr_text(cfg: Config, num_processes: int) -> str:
    """``optim.lr X per 256 -> Y at total batch B (...)``, Y as the trainer computes its peak lr."""
    batch = total_batch(cfg, num_processes)
    parts = f"{cfg.train.batch_size} per process x {num_processes} process(es)" + (
        f" x {cfg.train.grad_accum_steps} accumulated" if cfg.train.grad_accum_steps > 1 else "")
    lr = scaled_lr(cfg.optim.lr, batch, cfg.optim.scale_lr)
    if not cfg.optim.scale_lr:
        return f"optim.lr {cfg.optim.lr:g} (optim.scale_lr=false: not scaled) at total batch {batch} ({parts})"
    return f"optim.lr {cfg.optim.lr:g} per 256 -> {lr:g} at total batch {batch} ({parts})"


def start_line(cfg: Config, train_samples: int, num_classes: int, num_processes: int) -> str:
    """The run's plan in one line."""
    per_epoch = (f" ({cfg.data.samples_per_epoch} per epoch)" if cfg.data.samples_per_epoch else "")
    return (f"plan: {cfg.method} on {train_samples} training samples{per_epoch}, {num_classes} classes, "
            f"{cfg.train.epochs} epochs; {warmup_text(cfg)}; {lr_text(cfg, num_processes)}")
