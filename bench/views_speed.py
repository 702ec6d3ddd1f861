"""TCL's three views per image: the reference's per-image PIL pipeline, tcl_hf's former kornia views and
tcl_hf's batched views.

    python bench/views_speed.py [--batch 256] [--batches 10] [--size 32]

All three make one weak and two strong views of the same uint8 images and normalize them. The reference
style runs torchvision transforms image by image in one process (what each of its loader workers does);
the other two run on whole batches on the training device (GPU when there is one). Prints samples/s of
each and their ratios, measured in this run on this machine (say which machine when quoting them), and
the aten ops each batched path dispatches per call with the host syncs among them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torchvision import transforms as T

from tcl_hf.views import Views

# The op recorder is a test tool (it is built on torch's private dispatch modules), not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from op_recorder import OpRecorder  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def reference_views(size: int):
    """The reference's weak and strong PIL transforms (spec section 3)."""
    normalize = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    weak = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(size, padding=size // 8), normalize])
    strong = T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
                        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                        T.RandomSolarize(128, p=0.5), normalize])
    return lambda image: (weak(image), strong(image), strong(image))


class KorniaViews(nn.Module):
    """tcl_hf's views before the batched kernels (kornia modules, CIFAR configuration), kept for comparison."""

    def __init__(self, size: int):
        super().__init__()
        self.weak_aug = nn.Sequential(K.RandomHorizontalFlip(), K.RandomCrop((size, size), padding=size // 8))
        self.strong_aug = nn.Sequential(
            K.RandomResizedCrop((size, size), scale=(0.2, 1.0)), K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=0.5))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def weak(self, images: torch.Tensor) -> torch.Tensor:
        return (self.weak_aug(images.float() / 255) - self.mean) / self.std

    @torch.no_grad()
    def strong(self, images: torch.Tensor) -> torch.Tensor:
        return (self.strong_aug(images.float() / 255) - self.mean) / self.std


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def three_views(views, batch: torch.Tensor):
    """One batch's weak and two strong views, as a training step makes them."""
    return lambda: (views.weak(batch), views.strong(batch), views.strong(batch))


def interleaved_rates(steps: dict, batch_size: int, batches: int, device: torch.device) -> dict:
    """Samples/s of each step from its median batch time, the steps taking turns batch by batch so that
    load from other processes on a shared machine falls on all of them alike."""
    for step in steps.values():  # warm-up: kernel selection, caches
        step()
    seconds = {name: [] for name in steps}
    for _ in range(batches):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: batch_size / statistics.median(times) for name, times in seconds.items()}


def op_counts(views, images: torch.Tensor) -> str:
    """Aten ops per call of each view at batch 8 and at the full batch, and what among them syncs the host
    (.item(), nonzero, boolean-mask indexing, copies between devices; on a CPU, .tolist() goes unseen)."""
    parts = []
    for name in ("weak", "strong"):
        totals = []
        for batch in (images[:8], images):
            with OpRecorder() as ops:
                getattr(views, name)(batch)
            totals.append(f"{ops.total:,}")
        syncs = ", ".join(f"{reason} x{n}" for reason, n in ops.flagged.items()) or "no syncs"  # full batch
        parts.append(f"{name} {' / '.join(totals)} ({syncs})")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    pil = [Image.fromarray(a) for a in images]
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)

    ref = reference_views(args.size)
    kornia_views = KorniaViews(args.size).to(device)
    ours = Views(args.size, MEAN, STD).to(device)
    rates = interleaved_rates({
        "reference": lambda: torch.stack([torch.cat(ref(image)) for image in pil]),
        "kornia": three_views(kornia_views, batch),
        "batched": three_views(ours, batch),
    }, args.batch, args.batches, device)
    ref_rate, kornia_rate, ours_rate = rates["reference"], rates["kornia"], rates["batched"]

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; {args.batch} images at {args.size} px, 3 views each; "
          f"median of {args.batches} batches, interleaved")
    print(f"reference-style PIL, one process: {ref_rate:,.0f} samples/s")
    print(f"former kornia views:              {kornia_rate:,.0f} samples/s")
    print(f"tcl_hf batched views:             {ours_rate:,.0f} samples/s")
    print(f"ratio batched / reference:        {ours_rate / ref_rate:.2f}x")
    print(f"ratio batched / kornia:           {ours_rate / kornia_rate:.2f}x")
    print(f"aten ops per call at batch 8 / {args.batch}:")
    print(f"  kornia:  {op_counts(kornia_views, batch)}")
    print(f"  batched: {op_counts(ours, batch)}")


if __name__ == "__main__":
    main()
