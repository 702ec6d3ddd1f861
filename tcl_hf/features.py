"""What the network makes of a whole split: normalized projections, class probabilities, and which images
could not be read — every sample exactly once across all processes (the EM step depends on it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class Features:
    z: torch.Tensor     # [N, d] normalized projections
    p: torch.Tensor     # [N, C] class probabilities
    bad: torch.Tensor   # [N] images that could not be read (no verdict, no score)


@torch.no_grad()
def extract(model: torch.nn.Module, loader, transform: Callable[[torch.Tensor], torch.Tensor], num_samples: int,
            proj_dim: int, num_classes: int, accelerator) -> Features:
    """Run ``model`` (unwrapped, in eval mode) over ``loader`` (items: images, index, ok) and gather the
    outputs of every process into [N, ...] buffers, in sample order."""
    device = accelerator.device
    model.eval()
    z_all = torch.zeros(num_samples, proj_dim, device=device)
    p_all = torch.zeros(num_samples, num_classes, device=device)
    bad = torch.zeros(num_samples, dtype=torch.bool, device=device)
    seen = torch.zeros(num_samples, dtype=torch.long, device=device)
    for images, index, ok in loader:
        z, logits = model(transform(images))
        # gather_for_metrics drops the samples the distributed sampler repeated to even out shards.
        z, p, index, ok = accelerator.gather_for_metrics((z.float(), F.softmax(logits.float(), dim=1), index, ok))
        z_all[index] = z
        p_all[index] = p
        bad[index] = ~ok
        seen.index_add_(0, index, torch.ones_like(index))
    if not bool((seen == 1).all()):
        raise RuntimeError(f"feature extraction saw {int((seen == 0).sum())} samples 0 times and "
                           f"{int((seen > 1).sum())} more than once")
    return Features(z_all, p_all, bad)
