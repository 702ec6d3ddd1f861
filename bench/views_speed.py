"""TCL's three views per image: the reference's per-image PIL pipeline vs tcl_hf's batched views.

    python bench/views_speed.py [--batch 256] [--batches 20] [--size 32]

Both make one weak and two strong views of the same uint8 images and normalize them; the reference
style runs torchvision transforms image by image in one process (what each of its loader workers does),
ours runs kornia on whole batches on the training device (GPU when there is one). Prints samples/s of
each and their ratio, measured in this run on this machine; say which machine when quoting it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from tcl_hf.views import Views

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def reference_views(size: int):
    """The reference's weak and strong PIL transforms (spec section 3)."""
    normalize = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    weak = T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(size, padding=size // 8), normalize])
    strong = T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
                        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                        T.RandomSolarize(128, p=0.5), normalize])
    return lambda image: (weak(image), strong(image), strong(image))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    pil = [Image.fromarray(a) for a in images]
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)

    ref = reference_views(args.size)
    ref(pil[0])  # warm-up
    start = time.perf_counter()
    for _ in range(args.batches):
        out = [ref(image) for image in pil]
        torch.stack([torch.cat(views) for views in out])
    ref_rate = args.batches * args.batch / (time.perf_counter() - start)

    views = Views(args.size, MEAN, STD).to(device)
    for _ in range(3):  # warm-up (kernel selection, caches)
        views.weak(batch), views.strong(batch), views.strong(batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.batches):
        views.weak(batch), views.strong(batch), views.strong(batch)
    sync(device)
    ours_rate = args.batches * args.batch / (time.perf_counter() - start)

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; {args.batches} batches of {args.batch} images at {args.size} px, 3 views each")
    print(f"reference-style PIL, one process: {ref_rate:,.0f} samples/s")
    print(f"tcl_hf batched views:             {ours_rate:,.0f} samples/s")
    print(f"ratio (ours / reference):         {ours_rate / ref_rate:.2f}x")


if __name__ == "__main__":
    main()
