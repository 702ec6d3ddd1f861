"""Images: decoding any file or datasets cell to the stored uint8 array, and the datasets that hand them out.

Every dataset here yields ``(image uint8 [3, H, W], index, ok)``: the index is the sample's row in its
split (labels never travel with images, so clean labels kept for measuring cannot leak into a loss),
and ``ok=False`` marks an image that could not be read (handed out as zeros, left out and counted).

What counts as a bad image: a file that is missing, is not a regular file (a FIFO would block the
loader forever), has more pixels than ``data.max_image_pixels`` or would once its shorter side is
resized, has a side over ``MAX_ASPECT_RATIO`` times the other (all read from the header, before any
decoding), cannot be identified as an image, or raises while decoding. A truncated JPEG is *not*
bad: PIL's ``LOAD_TRUNCATED_IMAGES`` is set here, so the missing part comes out grey, as in the
reference pipelines that read web crawls.
"""
from __future__ import annotations

from collections.abc import Iterable

import io
import math
import os
import stat

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..config import MAX_IMAGE_PIXELS
from ..errors import DataError
from .contract import Decoding

# Web crawls hold truncated JPEGs that still decode usefully.
ImageFile.LOAD_TRUNCATED_IMAGES = True

# Beyond this the centre crop keeps under 1 % of the image, and the resized long side grows with the ratio.
MAX_ASPECT_RATIO = 100

# What PIL raises for files it cannot read; anything else is a bug and should surface.
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

class TensorImages(Dataset):
    """Decoded images held in memory as uint8 [N, C, H, W]; items are (image, index, ok)."""

    def __init__(self, images: torch.Tensor, ok: torch.Tensor | None = None):
        self.images = images
        self.ok = ok if ok is not None else torch.ones(images.shape[0], dtype=torch.bool)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        # Every dataset yields (image, index, ok); ok=False marks an image that could not be read.
        return self.images[index], index, bool(self.ok[index])

class HFImages(Dataset):
    """A datasets split whose images decode when a loader worker asks; items are (image, index, ok)."""

    def __init__(self, split, column: str, decoding: Decoding, on_bad_image: str, max_pixels: int = MAX_IMAGE_PIXELS):
        import datasets

        self.split = split.cast_column(column, datasets.Image(decode=False)).select_columns([column])
        self.column, self.decoding, self.on_bad_image = column, decoding, on_bad_image
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image, ok = decode_cell(self.split[index][self.column], self.decoding, self.on_bad_image, self.max_pixels)
        return torch.tensor(image).permute(2, 0, 1), index, ok


# ---- lazy images --------------------------------------------------------------------------------
class FileImages(Dataset):
    """Images decoded from files when asked for; items are (uint8 [3, crop, crop], index, ok).

    ``on_bad_image='skip'``: a file that cannot be read gives a zero image and ok=False (the trainer
    leaves it out and counts it); ``'error'``: it raises DataError naming the file. A file that is not
    a regular file, or has (or would have once resized) more than ``max_pixels`` pixels, counts as unreadable.
    """

    def __init__(self, paths, decoding: Decoding, on_bad_image: str = "skip", max_pixels: int = MAX_IMAGE_PIXELS):
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if decoding.crop > decoding.resize:
            raise ValueError(f"crop ({decoding.crop}) must not exceed resize ({decoding.resize})")
        # One numpy bytes array instead of a list of str: forked loader workers would otherwise copy
        # every page of a million-string list as they touch the refcounts.
        self._paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.decoding, self.on_bad_image = decoding, on_bad_image
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return os.fsdecode(self._paths[index])

    def __getitem__(self, index: int):
        array, ok = decode_cell({"path": self.path(index)}, self.decoding, self.on_bad_image, self.max_pixels)
        # A copy: the array PIL hands out is read-only, which torch.from_numpy warns about.
        return torch.tensor(array).permute(2, 0, 1), index, ok


def to_8_bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8-bit 'L', rescaled: PIL's own convert clips
    such values to 0..255, which turns almost every 16-bit image white.

    16-bit modes (I;16*): 0..65535 -> 0..255. 'I' (32-bit int; older PIL opens 16-bit PNGs so): the same
    when its values lie in 0..65535, otherwise min-max. 'F' (float): values in [0, 1] are scaled by
    255, otherwise min-max; NaN and infinite pixels count as 0. Min-max maps the smallest value to 0
    and the largest to 255 (a constant image comes out black).
    """
    # float32 holds every 16-bit value exactly, at half the memory of float64 on a large image.
    array = np.asarray(image).astype(np.float32)
    if image.mode == "F":
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if image.mode == "F" and 0.0 <= lo and hi <= 1.0:
        scaled = array * np.float32(255.0)
    elif image.mode != "F" and 0.0 <= lo and hi <= 65535.0:
        scaled = array * np.float32(255.0 / 65535.0)
    else:
        scaled = (array - np.float32(lo)) * np.float32(255.0 / ((hi - lo) or 1.0))
    return Image.fromarray(np.round(scaled).clip(0, 255).astype(np.uint8), mode="L")

def to_rgb_array(image: Image.Image, decoding: Decoding) -> np.ndarray:
    """Any PIL image -> RGB uint8 [crop, crop, 3], as timm's evaluation transform prepares it: the shorter
    side resized to ``decoding.resize`` (torchvision's Resize rule), then a centre crop (its CenterCrop rounding)."""
    from timm.data.transforms import str_to_pil_interp

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = to_8_bit(image)
    if image.mode == "P" and "transparency" in image.info:
        # Going through RGBA avoids PIL's per-image warning about palette transparency.
        image = image.convert("RGBA")
    image = image.convert("RGB")
    size = resized_size(*image.size, decoding.resize)
    if size != image.size:
        image = image.resize(size, str_to_pil_interp(decoding.interpolation))
    w, h = image.size
    left, top = int(round((w - decoding.crop) / 2.0)), int(round((h - decoding.crop) / 2.0))
    if (left, top, w, h) != (0, 0, decoding.crop, decoding.crop):
        image = image.crop((left, top, left + decoding.crop, top + decoding.crop))
    return np.asarray(image, dtype=np.uint8)

def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """(width, height) after the shorter side is resized to ``resize`` (torchvision's Resize rule)."""
    short, long = min(width, height), max(width, height)
    if short == resize:
        return width, height
    new_long = int(resize * long / short)
    return (resize, new_long) if width <= height else (new_long, resize)

def _check_size(width: int, height: int, decoding: Decoding, max_pixels: int) -> None:
    """Refuse, from the header, an image whose decoding would allocate more than ``max_pixels`` pixels: the
    source itself, or the resize of its shorter side (a 1x200,000 px strip resized to 256 is 51 GP)."""
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} pixels, over data.max_image_pixels={max_pixels}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(f"{width}x{height} pixels, aspect ratio over {MAX_ASPECT_RATIO}:1")
    new_w, new_h = resized_size(width, height, decoding.resize)
    if new_w * new_h > max_pixels:
        raise ValueError(f"{width}x{height} pixels, resized to {new_w}x{new_h}, over "
                         f"data.max_image_pixels={max_pixels}")

def _open(cell, decoding: Decoding, max_pixels: int) -> Image.Image:
    """A datasets Image cell read with decode=False: {'bytes': ..., 'path': ...}, opened (header only)
    and checked against the pixel cap before anything is decoded."""
    if cell.get("bytes"):
        image = Image.open(io.BytesIO(cell["bytes"]))
    else:
        # Opening a FIFO waits for a writer, i.e. forever; stat answers at once, for any kind of file.
        if not stat.S_ISREG(os.stat(cell["path"]).st_mode):
            raise ValueError("not a regular file")
        image = Image.open(cell["path"])
    try:
        _check_size(*image.size, decoding, max_pixels)  # from the header: Image.open is lazy
    except ValueError:
        image.close()
        raise
    return image

def decode_cell(cell: dict | str, decoding: Decoding, on_bad_image: str = "error",
                max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, bool]:
    """One undecoded image cell -> (RGB uint8 [crop, crop, 3], ok); an unreadable one (missing, not a regular
    file, over `max_pixels` as stored or as resized, too elongated, undecodable) is zeros with ok=False, or a
    DataError naming it when on_bad_image='error'."""
    try:
        return to_rgb_array(_open(cell, decoding, max_pixels), decoding), True
    except BAD_IMAGE_ERRORS as exc:
        where = cell.get("path") or "an embedded image"
        if on_bad_image == "error":
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"image {where}: cannot be read ({reason}); "
                            f"set data.on_bad_image=skip to leave such files out") from None
        return np.zeros((decoding.crop, decoding.crop, 3), dtype=np.uint8), False

def decode_images(cells: Iterable[dict | str], decoding: Decoding, on_bad_image: str = "error",
                  max_pixels: int = MAX_IMAGE_PIXELS, progress: str | None = None,
                  out: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a column of undecoded image cells into uint8 [N, 3, crop, crop] and an ok mask [N]: into ``out`` when
    given (a memory-mapped file, say; then ``cells`` may be any iterable of len(out) cells). Each image goes straight
    to its place in the final layout, so decoding holds the set once, never a second time in another layout.
    ``progress`` labels a progress bar (count and images/s: a large set takes minutes), None shows none."""
    if out is None:
        out = np.empty((len(cells), 3, decoding.crop, decoding.crop), dtype=np.uint8)
    ok = np.ones(len(out), dtype=bool)
    count = 0
    shown = tqdm(cells, total=len(out), desc=progress, unit="img", disable=progress is None, dynamic_ncols=True)
    for count, cell in enumerate(shown, 1):
        array, ok[count - 1] = decode_cell(cell, decoding, on_bad_image, max_pixels)
        out[count - 1] = array.transpose(2, 0, 1)
    if count != len(out):
        raise ValueError(f"{count} image cells for {len(out)} images")
    return torch.from_numpy(out), torch.from_numpy(ok)

def channel_stats(images: torch.Tensor, ok: torch.Tensor | None = None) -> tuple[tuple, tuple]:
    """Per-channel mean and (unbiased) std of uint8 images [N, C, H, W] where ``ok``, in [0, 1] units (NaN for none).

    From each channel's histogram of the 256 values, ~1 M pixels at a time: exact, and the set is never converted
    (a float copy would hold four times its size, 16 GiB for a 4 GiB in-memory set) nor copied whole."""
    chunk = max(1, 2**20 // max(images[0].numel(), 1)) if len(images) else 1
    counts = torch.zeros(images.shape[1], 256, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk]
        if ok is not None:
            part = part[ok[start:start + chunk]]
        for c in range(images.shape[1]):
            counts[c] += torch.bincount(part[:, c].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.int64)
    # Python integers from here: the sum of squares minus the squared sum stays exact (no cancellation).
    n = int(counts[0].sum())
    if n < 2:
        return (math.nan,) * images.shape[1], (math.nan,) * images.shape[1]
    sums, squares = (counts * values).sum(dim=1).tolist(), (counts * values * values).sum(dim=1).tolist()
    mean = tuple(s / n / 255.0 for s in sums)
    return mean, tuple(math.sqrt((q * n - s * s) / (n * (n - 1))) / 255.0 for s, q in zip(sums, squares))
