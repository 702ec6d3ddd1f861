"""Scale: the cost of everything around the network, from 10 thousand to a million training samples.

    python bench/scale.py                          # N = 10k, 100k, 1M
    python bench/scale.py --sizes 10000,100000 --phases knn,report
    python bench/scale.py --smoke --out FILE.json  # N = 10k and 100k (a few minutes on 2 cores)
    python bench/scale.py --jpeg 500               # ms per WebVision-sized JPEG decoded as its recipe decodes it

Each phase runs the project's own code on synthetic inputs, in a fresh subprocess per (phase, N):

  em_{torch,sklearn}_c{14,1000}  the EM step outside the network (tcl_hf.detector.em_step: prototypes, soft
                                 assignments, one GMM per class, tcl.per_class_gmm=true) on synthetic z [N, 256]
                                 and p [N, C], with each tcl.gmm_backend, at 14 (Clothing1M) and 1,000 classes
  knn                            tcl_hf.evaluation.knn_predict: 10,000 queries (a fixed test set) against a bank of
                                 N projections, k=200
  checkpoint_c{14,1000}          RunState.save to a folder, then a fresh RunState(N, C, 256).load of it
  report                         tcl_hf.report.label_issues + write_label_issues (the CSV) + review.write_review_page
                                 (top 1,000 thumbnails) of N samples with class names
  repair                         tcl_hf.repair.repair_run on a made-up finished run whose training split is a
                                 parquet file of N tiny PNGs (format hf, data.test_fraction 0.1, symmetric noise):
                                 the split rebuilt, verdicts, every image embedded into parquet shards, card, page
  decode                         tcl_hf.data.decoded.decode_split of a datasets split saved to disk (N 10x12 PNGs
                                 to 8x8) into the memory-mapped decode cache, the cache removed before

Before a phase starts its inputs are built and the peak RSS is reset to the current RSS (/proc/self/clear_refs), so
``peak_rss_mb`` is the memory the phase itself adds on top of its inputs; ``input_rss_mb`` is what the inputs hold
above the interpreter and its imports. Prints a table; writes {"rows": [...]} to --out after every phase.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES, SMOKE_SIZES = [10_000, 100_000, 1_000_000], [10_000, 100_000]
DIM, QUERIES, KNN_K, SEED = 256, 10_000, 200, 0
NAMES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket", "Downcoat", "Suit",
         "Shawl", "Dress", "Vest", "Underwear"]  # Clothing1M's classes: the report's name columns
BASELINE_IMPORTS = ("torch", "datasets", "pandas", "tcl_hf.detector", "tcl_hf.evaluation", "tcl_hf.state",
                    "tcl_hf.report", "tcl_hf.review", "tcl_hf.repair", "tcl_hf.repaired_dataset", "tcl_hf.config",
                    "tcl_hf.data", "tcl_hf.data.decoded", "tcl_hf.data.hf", "tcl_hf.noise", "huggingface_hub")
PHASES = ["em_torch_c14", "em_sklearn_c14", "em_torch_c1000", "em_sklearn_c1000", "knn", "checkpoint_c14",
          "checkpoint_c1000", "report", "repair", "decode"]


# ---- memory ---------------------------------------------------------------------------------------------------
def _status_mb(key: str) -> float:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)


def _available_mb() -> float:
    return int(re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1)) / 1024


# ---- inputs ---------------------------------------------------------------------------------------------------
def _features(n: int, classes: int):
    """Normalised z [N, DIM] around one centre per class, p [N, C] from a softmax, given labels with 30 % noise."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(SEED)
    labels = torch.randint(0, classes, (n,), generator=gen)
    centres = F.normalize(torch.randn(classes, DIM, generator=gen), dim=1)
    z = F.normalize(centres[labels] + 0.7 * torch.randn(n, DIM, generator=gen), dim=1)
    p = torch.empty(n, classes)
    for start in range(0, n, 65536):  # in chunks: the inputs' own temporaries stay out of the phase
        p[start:start + 65536] = torch.softmax(8 * z[start:start + 65536] @ centres.T, dim=1)
    noisy = torch.rand(n, generator=gen) < 0.3
    given = torch.where(noisy, torch.randint(0, classes, (n,), generator=gen), labels)
    return z, p, given


def _pictures(count: int = 256):
    """A pool of small random RGB pictures, 10x12, as PNG bytes."""
    import io

    import numpy as np
    from PIL import Image

    rng, out = np.random.default_rng(SEED), []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def make_split(n: int, folder: Path) -> None:
    """N tiny PNGs with 14 named classes: ``folder/split`` (save_to_disk) and ``folder/train.parquet``."""
    import datasets
    import numpy as np

    pool = _pictures()
    labels = np.random.default_rng(SEED).integers(0, len(NAMES), n)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    images = [{"bytes": pool[i % len(pool)], "path": None} for i in range(n)]
    ds = datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)
    ds.save_to_disk(str(folder / "split"))
    ds.to_parquet(str(folder / "train.parquet"))


# ---- phases: each builds its inputs and returns the timed work ------------------------------------------------------
def em_phase(n: int, classes: int, backend: str):
    from tcl_hf.detector import em_step

    z, p, given = _features(n, classes)
    return lambda: {"clean_ratio": em_step(z, p, given, 0.25, per_class=True, backend=backend).clean_ratio}


def knn_phase(n: int):
    from tcl_hf.evaluation import knn_predict

    bank, _, given = _features(n, len(NAMES))
    query = bank[:QUERIES].clone()
    return lambda: {"queries": len(knn_predict(query, bank, given, len(NAMES), KNN_K, 0.1))}


def checkpoint_phase(n: int, classes: int, work: Path):
    import torch

    from tcl_hf.state import RunState

    state = RunState(n, classes, DIM)
    state.confidences, state.suspicion = torch.rand(n), torch.rand(n)
    state.assignments = torch.softmax(torch.randn(n, classes), dim=1)
    state.predictions = torch.randint(0, classes, (n,))
    folder = work / "checkpoint"
    folder.mkdir()

    def go():
        state.save(folder)
        RunState(n, classes, DIM).load(folder)
        return {"disk_mb": sum(f.stat().st_size for f in folder.iterdir()) / 2**20}
    return go


def report_phase(n: int, work: Path):
    import numpy as np
    from PIL import Image

    from tcl_hf.report import label_issues, write_label_issues
    from tcl_hf.review import write_review_page

    rng = np.random.default_rng(SEED)
    clean = rng.integers(0, len(NAMES), n)
    given = np.where(rng.random(n) < 0.3, rng.integers(0, len(NAMES), n), clean)
    predicted, clean_prob, suspicion = rng.integers(0, len(NAMES), n), rng.random(n), rng.random(n)
    picture = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))

    def go():
        issues = label_issues(given, predicted, clean_prob, clean, NAMES, suspicion=suspicion, sample_id=np.arange(n))
        csv = write_label_issues(work, issues)
        page = write_review_page(work, issues, lambda row: picture)
        return {"csv_mb": csv.stat().st_size / 2**20, "page_mb": page.stat().st_size / 2**20}
    return go


def repair_phase(n: int, work: Path, data: Path):
    from tcl_hf.config import load_config, save_config
    from tcl_hf.repair import _run_config, repair_run
    from tcl_hf.repaired_dataset import training_split
    from tcl_hf.report import label_issues, write_label_issues
    from tcl_hf.rundir import CONFIG_FILE, SUMMARY_FILE

    import numpy as np

    run = work / "run"
    run.mkdir()
    keys = ["data.format=hf", f"data.path={data / 'train.parquet'}", "data.test_fraction=0.1", "data.image_size=8",
            "model.backbone=preact_resnet_mini", "noise.type=sym", "noise.rate=0.3", f"output_dir={run}"]
    save_config(load_config(None, keys), run / CONFIG_FILE)
    split = training_split(_run_config(run))  # the labels the made-up run trained on
    rng = np.random.default_rng(SEED)
    rows = len(split.given)
    write_label_issues(run, label_issues(split.given, rng.integers(0, len(NAMES), rows), rng.random(rows),
                                         split.clean, NAMES))
    (run / SUMMARY_FILE).write_text(json.dumps({"verdict": "ok", "epochs_completed": 1}))
    del split

    def go():
        done = repair_run(run)
        return {"kept": done.counts["kept"], "disk_mb": sum(f.stat().st_size for f in done.folder.rglob("*")
                                                          if f.is_file()) / 2**20}
    return go


def decode_phase(data: Path):
    import datasets

    from tcl_hf.data import cache
    from tcl_hf.data.contract import Decoding
    from tcl_hf.data.decoded import decode_split
    from tcl_hf.data.images import decode_images

    decode_images([{"bytes": b, "path": None} for b in _pictures(4)], Decoding(8, 8, "bilinear"))  # first-call imports
    for files in cache.cache_entries(data / "split").values():  # a cold start: no decoded files yet
        for path in files:
            path.unlink()
    split = datasets.load_from_disk(str(data / "split"))
    return lambda: {"ok": int(decode_split(split, "image", Decoding(8, 8, "bilinear"), "error", 10**6)[1].sum())}


def jpeg_ms(count: int) -> float:
    """Milliseconds per image of tcl_hf's decode (decode_cell) of 341x256 JPEGs (WebVision's resized images have a
    shorter side of 256) to recipes/webvision.yaml's stored 341x341 (299 px at crop_pct 0.875), on one core."""
    import io

    import numpy as np
    from PIL import Image

    from tcl_hf.data.contract import Decoding
    from tcl_hf.data.images import decode_cell

    rng, cells = np.random.default_rng(SEED), []
    for _ in range(16):  # smooth content with some noise: photographs compress between flat colour and pure noise
        ramp = np.linspace(0, 255, 341)[None, :, None] * rng.random(3) + rng.normal(0, 12, (256, 341, 3))
        buffer = io.BytesIO()
        Image.fromarray(ramp.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        cells.append({"bytes": buffer.getvalue(), "path": None})
    decoding = Decoding(341, 341, "bilinear")
    decode_cell(cells[0], decoding)
    start = time.perf_counter()
    for k in range(count):
        decode_cell(cells[k % len(cells)], decoding)
    return 1000 * (time.perf_counter() - start) / count


def build(phase: str, n: int, work: Path, data: Path):
    if phase.startswith("em_"):
        _, backend, classes = phase.split("_")
        return em_phase(n, int(classes[1:]), backend)
    if phase.startswith("checkpoint_"):
        return checkpoint_phase(n, int(phase.split("_c")[1]), work)
    return {"knn": lambda: knn_phase(n), "report": lambda: report_phase(n, work),
            "repair": lambda: repair_phase(n, work, data), "decode": lambda: decode_phase(data)}[phase]()


def worker(phase: str, n: int, work: Path, data: Path) -> None:
    """One phase in this (fresh) process; prints its row as JSON on the last line."""
    import importlib

    for module in BASELINE_IMPORTS:  # the imports' memory is the baseline, not the inputs'
        importlib.import_module(module)
    base = _status_mb("VmRSS")
    go = build(phase, n, work, data)
    gc.collect()
    before = _status_mb("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    extra = go() or {}
    seconds = time.perf_counter() - start
    print(json.dumps({"phase": phase, "n": n, "seconds": round(seconds, 3),
                      "peak_rss_mb": round(_status_mb("VmHWM") - before, 1),
                      "input_rss_mb": round(before - base, 1), **extra}))


# ---- the driver ----------------------------------------------------------------------------------------------------
def _need_mb(phase: str, n: int, rows: list[dict]) -> float:
    """What a phase needs at N (inputs and peak), scaled linearly from its largest measured smaller N: a phase this
    machine cannot hold is skipped and said so, rather than killed for memory."""
    done = [r for r in rows if r["phase"] == phase and r["n"] < n and r.get("peak_rss_mb") is not None]
    if not done or phase == "knn":  # kNN's similarities come ~1 GiB at a time, whatever N
        return 0.0
    last = max(done, key=lambda r: r["n"])
    return (last["peak_rss_mb"] + last.get("input_rss_mb", 0.0)) * n / last["n"]


def _run_one(phase: str, n: int, data: Path, scratch: Path, rows: list[dict]) -> dict:
    need = _need_mb(phase, n, rows)
    if need > 0.9 * _available_mb():
        return {"phase": phase, "n": n, "seconds": None, "peak_rss_mb": None,
                "skipped": f"needs ~{need / 1024:.0f} GiB, {_available_mb() / 1024:.0f} GiB available"}
    work = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{phase}-{n}-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "HF_DATASETS_CACHE": str(scratch / "hf-cache")}
    done = subprocess.run([sys.executable, __file__, "--worker", phase, str(n), str(work), str(data)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    shutil.rmtree(work, ignore_errors=True)
    if done.returncode != 0:
        return {"phase": phase, "n": n, "seconds": None, "peak_rss_mb": None,
                "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _line(row: dict) -> str:
    extra = {k: v for k, v in row.items() if k not in ("phase", "n", "seconds", "peak_rss_mb")}
    seconds = f"{row['seconds']:9.2f}" if row["seconds"] is not None else "        —"
    peak = f"{row['peak_rss_mb']:9.1f}" if row["peak_rss_mb"] is not None else "        —"
    return f"{row['phase']:<18} {row['n']:>9,} {seconds} {peak}  {json.dumps(extra)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=SIZES)
    parser.add_argument("--phases", type=lambda s: s.split(","), default=PHASES)
    parser.add_argument("--smoke", action="store_true", help=f"N = {SMOKE_SIZES}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    parser.add_argument("--scratch", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--prior", type=Path, help="an earlier --out at smaller sizes: its rows size the memory check")
    parser.add_argument("--jpeg", type=int, metavar="K", help="only time K WebVision-sized JPEG decodes (jpeg_ms)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        phase, n, work, data = args.worker
        return worker(phase, int(n), Path(work), Path(data))
    if args.jpeg:
        return print(f"decode_cell, 341x256 JPEG -> 341x341: {jpeg_ms(args.jpeg):.2f} ms/image (one core)")
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        parser.error(f"--phases: unknown {', '.join(unknown)}; allowed: {', '.join(PHASES)}")
    sizes = SMOKE_SIZES if args.smoke else args.sizes
    scratch = Path(tempfile.mkdtemp(prefix="tcl_hf-scale-", dir=args.scratch))
    rows, started = [], time.perf_counter()
    prior = json.loads(args.prior.read_text())["rows"] if args.prior else []
    print(f"{'phase':<18} {'N':>9} {'seconds':>9} {'peak MB':>9}  (peak: RSS added by the phase over its inputs)")
    try:
        for n in sizes:
            data = scratch / f"data-{n}"
            data.mkdir()
            if {"repair", "decode"} & set(args.phases):
                made = time.perf_counter()
                make_split(n, data)
                print(f"  (made {n:,} PNGs on disk in {time.perf_counter() - made:.1f} s)", flush=True)
            for phase in args.phases:
                rows.append(_run_one(phase, n, data, scratch, prior + rows))
                print(_line(rows[-1]), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"rows": rows, "wall_s": round(time.perf_counter() - started, 1)},
                                               indent=1) + "\n")
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _growth(rows)
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


def _growth(rows: list[dict]) -> None:
    """Seconds at each N over seconds at the N before, per phase."""
    for phase in dict.fromkeys(r["phase"] for r in rows):
        timed = [(r["n"], r["seconds"]) for r in rows if r["phase"] == phase and r["seconds"]]
        ratios = [f"{b[0] // a[0]}x N: {b[1] / a[1]:.1f}x" for a, b in zip(timed, timed[1:])]
        print(f"growth {phase}: {', '.join(ratios) or '—'}")


if __name__ == "__main__":
    main()
