"""Memory and time of TCL's EM step at Clothing1M scale, on whatever device is available.

    python bench/em_step.py                 # N = 1,000,000, C = 14, d = 256 (Clothing1M)
    python bench/em_step.py --n 50000 --classes 100

Prints the bytes per sample of the per-sample buffers the trainer keeps (z, p, gamma, confidences,
fp32), the peak extra memory of one EM step and its wall time. Times are for this machine only.
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import torch
import torch.nn.functional as F

from tcl_hf.detector import em_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, args.classes, (args.n,), generator=gen)
    centres = F.normalize(torch.randn(args.classes, args.dim, generator=gen), dim=1)
    z = F.normalize(centres[labels] + 0.5 * torch.randn(args.n, args.dim, generator=gen), dim=1).to(device)
    p = F.softmax(5 * z @ centres.to(device).T, dim=1)
    buffers = z.nelement() * 4 + p.nelement() * 4 + p.nelement() * 4 + args.n * 4  # z, p, gamma, confidences
    labels = labels.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    tracemalloc.start()
    start = time.perf_counter()
    result = em_step(z, p, labels, temperature=0.25)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    _, host_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    device_peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else 0
    print(f"device: {device}; N={args.n:,} C={args.classes} d={args.dim}")
    print(f"per-sample buffers: {buffers / args.n:,.0f} B/sample, {buffers / 2**30:.2f} GiB in total")
    print(f"EM step: {seconds:.2f} s; extra peak: {host_peak / 2**20:,.0f} MiB host (numpy/sklearn), "
          f"{device_peak / 2**20:,.0f} MiB device; estimated clean ratio {result.clean_ratio:.3f}")


if __name__ == "__main__":
    main()
