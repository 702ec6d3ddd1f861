"""What the network makes of a split: normalized projections, class probabilities, and which images could not
be read — for the requested samples, each exactly once across all processes (the EM step depends on it).

Two sources: images kept on the training device (each process takes a contiguous shard, one gather at the
end) and a loader (accelerate shards it; ``gather_for_metrics`` drops the samples it repeats).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import torch
import torch.nn.functional as F

from .batches import shard

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader


@dataclass
class Features:
    index: torch.Tensor  # [M] the training-split rows these features are for, in this order
    z: torch.Tensor      # [M, d] normalized projections
    p: torch.Tensor      # [M, C] class probabilities
    bad: torch.Tensor    # [M] images that could not be read (no verdict, no score)


Transform = Callable[[torch.Tensor], torch.Tensor]


def _outputs(model: torch.nn.Module, images: torch.Tensor, transform: Transform,
             accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    # Under the run's mixed precision (bf16 on a GPU when asked), as the training step.
    with accelerator.autocast():
        z, logits = model(transform(images))
    return z.float(), F.softmax(logits.float(), dim=1)


@torch.inference_mode()
def extract_on_device(model: torch.nn.Module, images: torch.Tensor, ok: torch.Tensor, index: torch.Tensor,
                      transform: Transform, batch_size: int, widths: tuple[int, int], accelerator: Accelerator,
                      progress: Callable[[Iterable], Iterable] = iter) -> Features:
    """Rows ``index`` of device-resident ``images``: this process takes its contiguous shard of them, and one
    gather puts every process's rows back in order. ``widths`` is (projection dim, classes); ``progress`` wraps
    the batches (a range) to show them, e.g. in a tqdm bar."""
    model.eval()
    rows = shard(len(index), accelerator.process_index, accelerator.num_processes)
    mine = index[rows.start:rows.stop]
    z = torch.zeros(len(mine), widths[0], device=images.device)
    p = torch.zeros(len(mine), widths[1], device=images.device)
    for i in progress(range(0, len(mine), batch_size)):
        z[i:i + batch_size], p[i:i + batch_size] = _outputs(model, images[mine[i:i + batch_size]], transform,
                                                            accelerator)
    if accelerator.num_processes > 1:
        z, p = (_gather_in_order(t, len(index), accelerator) for t in (z, p))
    return Features(index, z, p, ~ok[index])


def _gather_in_order(local: torch.Tensor, total: int, accelerator) -> torch.Tensor:
    """Every process's contiguous shard, in process order (padded to equal length for the collective)."""
    processes = accelerator.num_processes
    per = math.ceil(total / processes)
    gathered = accelerator.gather(F.pad(local, (0, 0, 0, per - local.shape[0])).contiguous())
    sizes = [len(shard(total, r, processes)) for r in range(processes)]
    return torch.cat([gathered[r * per: r * per + size] for r, size in enumerate(sizes)])


@torch.inference_mode()
def extract_with_loader(model: torch.nn.Module, loader: DataLoader, index: torch.Tensor, transform: Transform,
                        accelerator: Accelerator) -> Features:
    """Rows ``index`` through a prepared loader over exactly those rows (items: image, row, ok)."""
    model.eval()
    device = accelerator.device
    position = torch.full((int(index.max()) + 1 if len(index) else 0,), -1, dtype=torch.long, device=device)
    position[index.to(device)] = torch.arange(len(index), device=device)
    z_all = p_all = None
    bad = torch.zeros(len(index), dtype=torch.bool, device=device)
    seen = torch.zeros(len(index), dtype=torch.long, device=device)
    for images, rows, ok in loader:
        z, p = _outputs(model, images.to(device, non_blocking=True), transform, accelerator)
        z, p, rows, ok = accelerator.gather_for_metrics((z, p, rows.to(device), ok.to(device)))
        if z_all is None:
            z_all = z.new_zeros(len(index), z.shape[1])
            p_all = p.new_zeros(len(index), p.shape[1])
        at = position[rows]
        z_all[at], p_all[at], bad[at] = z, p, ~ok
        seen.index_add_(0, at, torch.ones_like(at))
    if not bool((seen == 1).all()):
        raise RuntimeError(f"feature extraction saw {int((seen == 0).sum())} samples 0 times and "
                           f"{int((seen > 1).sum())} more than once")
    return Features(index, z_all, p_all, bad)
