"""SGD and the reference learning-rate schedule (spec section 4), evaluated per optimizer step."""
from __future__ import annotations

import math

import torch


def scaled_lr(base_lr: float, total_batch: int, scale: bool) -> float:
    """Linear scaling rule of the reference: lr = base * total_batch / 256."""
    return base_lr * total_batch / 256 if scale else base_lr


def lr_at(epoch: float, peak_lr: float, warmup_epochs: int, epochs: int, min_ratio: float, quirk: bool) -> float:
    """LR at a fractional epoch (optimizer steps so far / steps per epoch).

    Linear warm-up from 0, then cosine from peak to peak*min_ratio. With `quirk` (the reference's
    default) the cosine phase divides by `epochs` instead of `epochs - warmup`, so it never reaches
    the minimum.
    """
    if epoch < warmup_epochs:
        return peak_lr * epoch / warmup_epochs
    span = epochs if quirk else max(epochs - warmup_epochs, 1)
    progress = min((epoch - warmup_epochs) / span, 1.0)
    low = peak_lr * min_ratio
    return low + 0.5 * (peak_lr - low) * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float,
                    fused: bool = False) -> torch.optim.SGD:
    """SGD as the reference: every parameter (BN and biases included) gets weight decay. ``fused`` (a GPU) updates
    all parameters in one kernel; otherwise PyTorch's multi-tensor (foreach) path where it has one."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=fused or None)
