"""Memory and time of TCL's EM step, and the torch GMM against the scikit-learn reference.

    python bench/em_step.py                 # EM step at N = 1,000,000, C = 14, d = 256 (Clothing1M)
    python bench/em_step.py --n 50000 --classes 100
    python bench/em_step.py --smoke         # small sizes, a few seconds

Part 1 prints the bytes per sample of the per-sample buffers the trainer keeps (z, p, gamma,
confidences, fp32), the peak extra memory of one EM step and its wall time.
Part 2 fits the per-class noise GMM to the same synthetic scores twice, with the torch backend (on
the device) and with scikit-learn class by class on the CPU (the reference), at N=50k x C=10,
50k x 100 and 1M x 14, and prints both times, the largest difference between the two clean
posteriors and how often their clean/noisy calls agree. Times are for this machine only.
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import torch
import torch.nn.functional as F

from tcl_hf.detector import confidences_from_scores, em_step

GMM_SIZES = [(50_000, 10), (50_000, 100), (1_000_000, 14)]
SMOKE_GMM_SIZES = [(5_000, 10), (5_000, 100), (20_000, 14)]


def em_step_memory(n: int, classes: int, dim: int, device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=gen)
    centres = F.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    z = F.normalize(centres[labels] + 0.5 * torch.randn(n, dim, generator=gen), dim=1).to(device)
    p = F.softmax(5 * z @ centres.to(device).T, dim=1)
    buffers = z.nelement() * 4 + p.nelement() * 4 + p.nelement() * 4 + n * 4  # z, p, gamma, confidences
    labels = labels.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    tracemalloc.start()
    start = time.perf_counter()
    result = em_step(z, p, labels, temperature=0.25)
    _sync(device)
    seconds = time.perf_counter() - start
    _, host_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    device_peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else 0
    print(f"EM step on {device}: N={n:,} C={classes} d={dim}")
    print(f"  per-sample buffers: {buffers / n:,.0f} B/sample, {buffers / 2**30:.2f} GiB in total")
    # tracemalloc sees numpy and Python allocations only, not torch's CPU tensors.
    print(f"  {seconds:.2f} s; extra peak: {host_peak / 2**20:,.0f} MiB host (Python/numpy), "
          f"{device_peak / 2**20:,.0f} MiB device; estimated clean ratio {result.clean_ratio:.3f}")


def synthetic_scores(n: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise scores -gamma_{i,y} shaped like the EM step's: 40 % noisy labels, a large clean mode at -1
    and noisy samples spread towards 0; unequal class sizes and some harder classes."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(1.0 + torch.rand(classes, generator=gen), n, replacement=True, generator=gen)
    noisy = torch.rand(n, generator=gen) < 0.4
    clean_gamma = 1.0 - torch.rand(n, generator=gen) ** 30 * (0.3 + 0.4 * torch.rand(classes, generator=gen)[labels])
    noisy_gamma = torch.rand(n, generator=gen) ** 3
    return -torch.where(noisy, noisy_gamma, clean_gamma), labels


def gmm_comparison(sizes: list[tuple[int, int]], device: str) -> None:
    print(f"\nPer-class noise GMM: torch on {device} vs scikit-learn class by class on the CPU"
          f"{' (these are CPU numbers)' if device == 'cpu' else ''}; torch threads: {torch.get_num_threads()}")
    warm_scores, warm_labels = synthetic_scores(1_000, 2)
    for backend in ("torch", "sklearn"):  # first-call costs (thread pools, imports) stay out of the times
        confidences_from_scores(warm_scores.to(device), warm_labels.to(device), True, 2, backend)
    for n, classes in sizes:
        scores, labels = synthetic_scores(n, classes)
        scores, labels = scores.to(device), labels.to(device)
        fitted, seconds = {}, {}
        for backend in ("torch", "sklearn"):
            start = time.perf_counter()
            fitted[backend] = confidences_from_scores(scores, labels, True, classes, backend)
            _sync(device)
            seconds[backend] = time.perf_counter() - start
        diff = float((fitted["torch"] - fitted["sklearn"]).abs().max())
        agree = float(((fitted["torch"] > 0.5) == (fitted["sklearn"] > 0.5)).double().mean())
        print(f"  N={n:>9,} C={classes:>3}: torch {seconds['torch']:7.3f} s, scikit-learn {seconds['sklearn']:7.3f} s "
              f"(x{seconds['sklearn'] / seconds['torch']:.1f}); max posterior difference {diff:.1e}, "
              f"decisions agree on {100 * agree:.3f} %")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="small sizes (EM step at N=20k, smaller GMM sizes)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    em_step_memory(20_000 if args.smoke else args.n, args.classes, args.dim, device)
    gmm_comparison(SMOKE_GMM_SIZES if args.smoke else GMM_SIZES, device)


if __name__ == "__main__":
    main()
