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


LR_RAMP_FRACTION = 0.1  # the paper ramps over 20 of its 200 epochs


def lr_ramp_epochs(epochs: int) -> int:
    """Length of the lr ramp under ``optim.warmup_epochs=auto``: a tenth of the run, at least one epoch."""
    return max(1, round(LR_RAMP_FRACTION * epochs))


def auto_lr_at(epoch: float, peak_lr: float, epochs: int, min_ratio: float, switch: int | None) -> float:
    """LR under ``optim.warmup_epochs=auto``, where TCL's start (``switch``: warm-up epochs done, None while
    undecided) is known only at run time.

    A linear ramp over the paper's share of the run (a tenth), fixed up front so it never depends on the switch;
    then the peak until the switch; then cosine from the peak at the switch to peak*min_ratio at the last epoch,
    so TCL always gets a whole cosine however long the warm-up was (``cosine_quirk`` is a reference detail and
    does not apply). The lr of every step follows from the step and the saved switch: resume is exact.
    """
    ramp = lr_ramp_epochs(epochs)
    if epoch < ramp:
        return peak_lr * epoch / ramp
    if switch is None or epoch <= switch:
        return peak_lr
    progress = min((epoch - switch) / max(epochs - switch, 1), 1.0)
    low = peak_lr * min_ratio
    return low + 0.5 * (peak_lr - low) * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float,
                    fused: bool = False) -> torch.optim.SGD:
    """SGD as the reference: every parameter (BN and biases included) gets weight decay. ``fused`` (a GPU) updates
    all parameters in one kernel; otherwise PyTorch's multi-tensor (foreach) path where it has one."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           fused=fused or None)
