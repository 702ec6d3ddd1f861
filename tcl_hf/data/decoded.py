"""Decoded images shared by every process of a machine: the first process to load an on-disk split decodes it
into ``.npy`` files beside the split's own datasets cache; the others (and later runs) map those files.

Eight processes of one job then hold one copy of the decoded set in the page cache, not eight, and a second run
on the same data skips decoding. Splits that live only in memory (the quickstart's digits) have no cache to sit
beside and are decoded in each process, which costs little at their size. The files are trusted only while
their content matches the digest written with them: pixels changed on disk are decoded again.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator, NamedTuple

import numpy as np
import torch
import xxhash

from . import images as image_decoding
from .contract import Decoding
from .images import decode_images

if TYPE_CHECKING:
    import datasets

# Part of every file's key: a change to what decoding produces must not reuse older files.
FORMAT_VERSION = 2  # 2: images too elongated, or too large once resized, are bad images; a digest beside them


class CacheFiles(NamedTuple):
    images: Path
    ok: Path
    digest: Path


def _stats_path(paths: CacheFiles) -> Path:
    """The decoded images' channel statistics (written by the decoding process when asked, keyed by the digest)."""
    return paths.digest.with_suffix(".stats.json")


def _cache_paths(split, column: str, decoding: Decoding, on_bad_image: str, max_pixels: int) -> CacheFiles | None:
    """Where the decoded images, their ok mask and their digest of ``split`` live, or None for a split without a
    disk cache."""
    files = getattr(split, "cache_files", None)
    if not files:
        return None
    key = json.dumps([FORMAT_VERSION, split._fingerprint, column, list(decoding), on_bad_image, max_pixels])
    stem = Path(files[0]["filename"]).parent / f"tcl_hf-decoded-{hashlib.sha256(key.encode()).hexdigest()[:20]}"
    return CacheFiles(stem.with_suffix(".images.npy"), stem.with_suffix(".ok.npy"), stem.with_suffix(".xxh3"))


def _digest(images: np.ndarray, ok: np.ndarray) -> str:
    """xxh3-128 of the pixels and the mask: ~13 ms for CIFAR's 50,000x32x32x3 uint8 (154 MB) in the page cache, so
    every process checks the whole content, not a sample, each time it maps the files."""
    digest = xxhash.xxh3_128()
    digest.update(np.ascontiguousarray(images))
    digest.update(np.ascontiguousarray(ok))
    return digest.hexdigest()


def _mapped(paths: CacheFiles, count: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The decoded files, mapped copy-on-write (shared until written, never written back), if complete and unchanged
    since they were written; None otherwise, with one line on stderr when the content changed."""
    try:
        images = np.load(paths.images, mmap_mode="c", allow_pickle=False)
        ok = np.load(paths.ok, allow_pickle=False)
        digest = paths.digest.read_text().strip()
    except (OSError, ValueError):
        return None  # absent, or cut short by a killed writer: decode again
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != count or ok.shape != (count,):
        return None
    if _digest(images, ok) != digest:
        print(f"decoded images {paths.images} differ from what was decoded (changed since it was written); "
              f"decoding again", file=sys.stderr)
        return None
    return torch.from_numpy(images), torch.from_numpy(ok.astype(bool))


def temp_path(path: Path) -> Path:
    """A new, empty file beside ``path`` for writing it: the host, the pid and a random part in its name, so writers
    on two machines that share a cache folder (an NFS home) never write into one file."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    # Created exclusively, with the umask's permissions (mkstemp's 0600 would shut other users out of a shared cache).
    tmp.touch(exist_ok=False)
    return tmp


def _write(path: Path, write: Callable[[IO], None]) -> None:
    """Atomically: a reader sees the whole file or none."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cells(split: datasets.Dataset, column: str) -> Iterator[dict]:
    """The undecoded image cells of ``split[column]``, read a batch at a time: the whole column as Python objects
    would hold every encoded image at once."""
    import datasets

    cells = split.cast_column(column, datasets.Image(decode=False)).select_columns([column])
    for batch in cells.iter(batch_size=1024):
        yield from batch[column]


def _decode_to_files(split: datasets.Dataset, column: str, decoding: Decoding, on_bad_image: str, max_pixels: int,
                     paths: CacheFiles, progress: str | None, stats: bool) -> None:
    """Decode straight into the memory-mapped images file (one copy of the set, in the page cache), then write the
    mask, the digest and (``stats``) the channel statistics, then give the images file its name: its presence is what
    says "complete", so every process that maps it finds the statistics too."""
    tmp = temp_path(paths.images)
    try:
        shape = (len(split), 3, decoding.crop, decoding.crop)
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):
            # Disk space now, as an OSError: a full disk met while writing through the map would be a SIGBUS.
            with open(tmp, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        # Only the mask kept: the images tensor would hold the map open past ``del pixels``.
        mask = decode_images(_cells(split, column), decoding, on_bad_image, max_pixels, progress, out=pixels)[1].numpy()
        digest = _digest(pixels, mask)
        if stats:
            _write_stats(paths, digest, image_decoding.channel_stats(torch.from_numpy(pixels), torch.from_numpy(mask)))
        pixels.flush()
        del pixels  # unmapped before the caller maps the final file: its pages would count twice
        _write(paths.ok, lambda f: np.save(f, mask, allow_pickle=False))
        _write(paths.digest, lambda f: f.write(digest.encode()))
        os.replace(tmp, paths.images)
    finally:
        tmp.unlink(missing_ok=True)


def _write_stats(paths: CacheFiles, digest: str, stats: tuple[tuple, tuple]) -> None:
    text = json.dumps({"digest": digest, "mean": list(stats[0]), "std": list(stats[1])})
    _write(_stats_path(paths), lambda f: f.write(text.encode()))


def _saved_stats(paths: CacheFiles) -> tuple[tuple, tuple] | None:
    """The statistics written with the decoded files, if they are of the files' current content."""
    try:
        saved = json.loads(_stats_path(paths).read_text())
        if saved["digest"] != paths.digest.read_text().strip():
            return None
        return tuple(float(v) for v in saved["mean"]), tuple(float(v) for v in saved["std"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def split_channel_stats(split: datasets.Dataset, column: str, decoding: Decoding, on_bad_image: str, max_pixels: int,
                        images: torch.Tensor, ok: torch.Tensor) -> tuple[tuple, tuple]:
    """``channel_stats(images, ok)`` of the split ``decode_split(..., stats=True)`` returned: read from beside the
    decoded files, where the process that decoded them wrote it, so a machine computes it once (each pass reads the
    whole set); computed here for a split without decoded files, or with files written before the statistics were."""
    paths = _cache_paths(split, column, decoding, on_bad_image, max_pixels)
    found = _saved_stats(paths) if paths is not None else None
    if found is not None:
        return found
    found = image_decoding.channel_stats(images, ok)
    if paths is not None and paths.digest.is_file():
        try:  # for the processes and runs after this one
            _write_stats(paths, paths.digest.read_text().strip(), found)
        except OSError:
            pass
    return found


def decode_split(split: datasets.Dataset, column: str, decoding: Decoding, on_bad_image: str, max_pixels: int,
                 progress: str | None = None, stats: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, crop, crop] images and ok mask [N] of ``split[column]`` — mapped from this machine's decoded
    files when an earlier process wrote them, else decoded here (for an on-disk split, into those files for the
    next; ``progress``: the bar's label, None for none). Either way decoding holds one copy of the images.
    ``stats``: a process that decodes into the files also writes the channel statistics beside them, for
    ``split_channel_stats``."""
    paths = _cache_paths(split, column, decoding, on_bad_image, max_pixels)
    if paths is not None and (found := _mapped(paths, len(split))) is not None:
        return found
    if paths is not None:
        try:
            _decode_to_files(split, column, decoding, on_bad_image, max_pixels, paths, progress, stats)
        except OSError:
            pass  # a read-only or full cache folder: this process decodes its own copy
        else:
            if (found := _mapped(paths, len(split))) is not None:
                return found
    return decode_images(_cells(split, column), decoding, on_bad_image, max_pixels, progress,
                         out=np.empty((len(split), 3, decoding.crop, decoding.crop), dtype=np.uint8))
