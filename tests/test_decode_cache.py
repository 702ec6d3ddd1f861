"""The decode cache: decoding holds one copy of the images, its files never collide between hosts sharing a folder,
and ``python -m tcl_hf.data.cache`` lists and removes them (and nothing else)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcl_hf.data import decoded, images
from tcl_hf.data.contract import Decoding

DECODING = Decoding(resize=12, crop=12, interpolation="bilinear")
ROOT = Path(__file__).resolve().parents[1]



# ---- one copy while decoding ---------------------------------------------------------------------
# Run in a fresh process: the peak resident set (VmHWM) is reset to the current one just before each decode.
PEAK_SCRIPT = r"""
import json, sys
import datasets
from tcl_hf.data import decoded, images
from tcl_hf.data.contract import Decoding

def kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

def peak_rise(work):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM restarts from VmRSS
    before = kib("VmRSS")
    work()
    return (kib("VmHWM") - before) * 1024

decoding = Decoding(64, 64, "bilinear")
on_disk = datasets.load_from_disk(sys.argv[1])
in_memory = datasets.load_from_disk(sys.argv[1], keep_in_memory=True)
# Warm up on every row at a small size: codecs and kernels loaded, the split's own mapped pages read.
decoded.decode_split(on_disk, "img", Decoding(8, 8, "bilinear"), "error", 10**6)
images.channel_stats(decoded.decode_split(in_memory, "img", Decoding(8, 8, "bilinear"), "error", 10**6)[0])
found = {}
rises = {
    "on_disk": peak_rise(lambda: found.update(on_disk=decoded.decode_split(on_disk, "img", decoding, "error", 10**6))),
    "in_memory": peak_rise(lambda: found.update(in_memory=decoded.decode_split(in_memory, "img", decoding, "error",
                                                                               10**6))),
    "channel_stats": peak_rise(lambda: images.channel_stats(found["in_memory"][0])),
}
print(json.dumps({"rises": rises, "decoded_bytes": found["on_disk"][0].numel(),
                  "equal": bool((found["on_disk"][0] == found["in_memory"][0]).all())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable peak RSS")
def test_decoding_holds_one_copy_of_the_images(tmp_path):
    import json

    import datasets

    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2000)]
    split = datasets.Dataset.from_dict({"img": pictures}, features=datasets.Features({"img": datasets.Image()}))
    split.save_to_disk(str(tmp_path / "split"))
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "split")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    size, rises = measured["decoded_bytes"], measured["rises"]
    assert size == 2000 * 3 * 64 * 64 and measured["equal"]
    # One copy plus the bookkeeping; the old path held the column's cells, the image array, a second one in the
    # channels-first layout and then the mapped file beside it (2x and more).
    for kind in ("on_disk", "in_memory"):
        assert rises[kind] <= 1.3 * size, f"{kind}: the peak rose {rises[kind] / size:.2f}x the decoded size"
    # The mean and std from histograms of chunks, not a float copy of the set (4x, and more for the std).
    assert rises["channel_stats"] <= 0.5 * size, f"channel_stats: {rises['channel_stats'] / size:.2f}x"
    print({kind: round(rise / size, 2) for kind, rise in rises.items()})


# ---- names that never collide --------------------------------------------------------------------
def test_temporary_files_name_the_host_and_a_random_part(on_disk, monkeypatch):
    renamed = []
    real_replace = os.replace

    def recording(src, dst):
        renamed.append((Path(src), Path(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(decoded.os, "replace", recording)
    split = on_disk()
    decoded.decode_split(split, "img", DECODING, "error", 10**6)
    paths = decoded._cache_paths(split, "img", DECODING, "error", 10**6)
    # The final names are the content-keyed ones; each was first written under a name of its own.
    assert sorted(dst for _, dst in renamed) == sorted(paths)
    for src, dst in renamed:
        assert src.parent == dst.parent and src.suffix == ".tmp"
        assert src.name.startswith(f".{dst.name}.{socket.gethostname()}.{os.getpid()}.")
        assert len(src.name) > len(f".{dst.name}.{socket.gethostname()}.{os.getpid()}..tmp") + 5  # a random part
    assert not [p for p in paths.images.parent.iterdir() if p.suffix == ".tmp"]  # none left behind
    # Two writers with the same host and pid (containers on two machines) still get two files.
    monkeypatch.setattr(decoded.socket, "gethostname", lambda: "node")
    monkeypatch.setattr(decoded.os, "getpid", lambda: 1)
    first, second = decoded.temp_path(paths.images), decoded.temp_path(paths.images)
    assert first != second and first.exists() and second.exists()


# ---- listing and clearing ------------------------------------------------------------------------
def test_the_cache_command_lists_and_removes_decode_caches_only(on_disk, tmp_path, capsys):
    from tcl_hf.data import cache

    cache_dir = tmp_path / "cache"
    split = on_disk()
    decoded.decode_split(split, "img", DECODING, "error", 10**6)
    decoded.decode_split(split, "img", DECODING._replace(crop=8, resize=8), "error", 10**6)
    arrow_dir = Path(split.cache_files[0]["filename"]).parent
    leftover = arrow_dir / ".tcl_hf-decoded-0123456789abcdef0123.images.npy.otherhost.7.x1y2.tmp"
    leftover.write_bytes(b"\0" * 1000)
    others = [arrow_dir / "my-tcl_hf-decoded-notes.txt", arrow_dir / "tcl_hf-decoded", cache_dir / "notes.txt"]
    for path in others:
        path.write_text("keep me")
    ours = [p for p in cache_dir.rglob("*") if p.name.lstrip(".").startswith("tcl_hf-decoded-")]
    assert len(ours) == 3 + 3 + 1
    everything_else = {p: p.read_bytes() for p in cache_dir.rglob("*") if p.is_file() and p not in ours}

    assert cache.main(["list", str(cache_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 + 1  # two caches, the leftover's, and the total
    total = sum(p.stat().st_size for p in ours)
    assert lines[-1].startswith(f"{total / 2**20:,.1f} MiB in 3 decode caches under {cache_dir}")
    for stem in {p.parent / p.name.lstrip(".").split(".")[0] for p in ours}:
        size = sum(p.stat().st_size for p in ours if p.parent / p.name.lstrip(".").split(".")[0] == stem)
        [line] = [line for line in lines if f" {stem} " in line]
        assert line.split()[0] == f"{size / 2**20:,.1f}"
    assert all(p.exists() for p in ours)  # listing removes nothing

    assert cache.main(["clear", str(cache_dir)]) == 0
    assert f"removed 7 files ({total / 2**20:,.1f} MiB)" in capsys.readouterr().out
    assert not any(p.exists() for p in ours)
    assert {p: p.read_bytes() for p in cache_dir.rglob("*") if p.is_file()} == everything_else
    # The datasets cache still works and the next run decodes again.
    again, ok = decoded.decode_split(on_disk(), "img", DECODING, "error", 10**6)
    assert ok.all() and again.shape == (6, 3, 12, 12) and len(cache.cache_entries(cache_dir)) == 1


def test_the_cache_command_refuses_a_missing_folder_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tcl_hf.data.cache", "list", str(tmp_path / "nowhere")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: PATH: {tmp_path / 'nowhere'} is not a folder; give the "
                                                "datasets cache folder that holds the decode caches"]


# ---- channel statistics without a float copy -----------------------------------------------------
def test_channel_stats_agree_with_float64_over_the_readable_images():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (1500, 3, 64, 64), dtype=np.uint8)  # several chunks of ~8 M values
    pixels[:, 1] //= 3  # channels that differ
    ok = rng.random(1500) < 0.8
    mean, std = images.channel_stats(torch.from_numpy(pixels), torch.from_numpy(ok))
    x = pixels[ok].astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3), ddof=1), rtol=1e-9)
