"""Real-world noisy datasets read from their standard folder layouts (WebVision 1.0 / mini-WebVision,
Clothing1M), and a lazy image dataset for sets too large to decode up front.

Readers return one ``ImageList`` (absolute paths + integer labels + class names) per split. Images
are decoded only when a loader worker asks for them, so start-up costs one pass over the list files.

What counts as a bad image: a file that is missing, is not a regular file (a FIFO would block the
loader forever), has more pixels than ``data.max_image_pixels`` (read from the header, before any
decoding), cannot be identified as an image, or raises while decoding. A truncated JPEG is *not*
bad: ``tcl_hf.data`` sets PIL's ``LOAD_TRUNCATED_IMAGES``, so the missing part comes out grey, as in
the reference pipelines that read web crawls.

Every path a list file names must be relative, without '..' (see ``_listed_path``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .config import MAX_IMAGE_PIXELS
from .contract import Decoding
from .data import decode_cell
from .errors import DataError

WEBVISION_CLASSES = 1000
# Per-channel statistics for normalisation; a million files are too many to measure at start-up.
CLOTHING1M_MEAN, CLOTHING1M_STD = (0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214)


@dataclass
class ImageList:
    """One split of a file-based dataset: absolute image paths and their integer labels."""

    paths: list[str]
    labels: np.ndarray        # int64 [N]
    class_names: list[str]
    unlabelled: int = 0       # listed images left out because the label file has no entry for them

    def __post_init__(self):
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices) -> "ImageList":
        """The samples at `indices`, in that order (same class names)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageList([self.paths[i] for i in indices], self.labels[indices], self.class_names)


# ---- list files ---------------------------------------------------------------------------------
def _lines(path: Path):
    """(line number, stripped text) for every non-blank line; CRLF and a UTF-8 BOM are accepted."""
    try:
        # newline=None folds CRLF into LF; utf-8-sig drops the byte-order mark some Windows editors write.
        with open(path, encoding="utf-8-sig", newline=None) as f:
            for number, line in enumerate(f, 1):
                text = line.strip()
                if text:
                    yield number, text
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None


def _check_range(path: Path, numbers: list[int], labels: list[int], num_classes: int) -> None:
    # On Python ints, before any int64 array exists: a label like 10**23 would overflow it.
    bad = [i for i, label in enumerate(labels) if not 0 <= label < num_classes]
    if bad:
        i = bad[0]
        raise DataError(f"{path} line {numbers[i]}: label {labels[i]} out of range; allowed 0..{num_classes - 1}"
                        + (f" ({len(bad)} such lines)" if len(bad) > 1 else ""))


def _listed_path(path: Path, number: int, text: str) -> str:
    """A path as listed, checked to stay inside the folder the list is relative to.

    The rule is lexical: absolute paths and any '..' component are refused, whatever the disk holds.
    Symlinks inside the dataset are followed, so images/ may link to another disk (a common layout);
    what the dataset's owner linked is trusted, what a crawled list line names is not. Resolving
    links instead would refuse that layout, and '..' after a link would not mean what it looks like.
    """
    if os.path.isabs(text) or ".." in Path(text).parts:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise DataError(f"{path} line {number}: image path {shown!r} leaves the dataset folder; list paths "
                        f"must be relative, without '..'")
    return text


def read_labelled_list(path: str | Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Lines ``<file> <label>`` -> (files as written, int64 labels), every label in 0..num_classes-1."""
    path = Path(path)
    files, labels, numbers = [], [], []
    for number, text in _lines(path):
        # rsplit keeps a file name with spaces whole; the label is always the last field.
        parts = text.rsplit(None, 1)
        try:
            label = int(parts[1]) if len(parts) == 2 else None
        except ValueError:
            label = None
        if label is None:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise DataError(f"{path} line {number}: expected '<file> <integer label>', got {shown!r}")
        files.append(_listed_path(path, number, parts[0]))
        labels.append(label)
        numbers.append(number)
    _check_range(path, numbers, labels, num_classes)
    return files, np.asarray(labels, dtype=np.int64)


def read_key_list(path: str | Path) -> list[tuple[int, str]]:
    """Lines holding one key (a relative image path) each -> [(line number, key)]."""
    path = Path(path)
    keys = []
    for number, text in _lines(path):
        if len(text.split()) != 1:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise DataError(f"{path} line {number}: expected one key (an image path) per line, got {shown!r}")
        keys.append((number, _listed_path(path, number, text)))
    return keys


def read_label_map(path: str | Path, num_classes: int) -> dict[str, int]:
    """A ``<key> <label>`` file as a dict; a key given two different labels is an error."""
    path = Path(path)
    keys, labels = read_labelled_list(path, num_classes)
    mapping = dict(zip(keys, labels.tolist()))
    if len(mapping) != len(keys):
        first: dict[str, int] = {}
        for key, label in zip(keys, labels.tolist()):
            if first.setdefault(key, label) != label:
                raise DataError(f"{path}: key {key!r} is listed with labels {first[key]} and {label}")
    return mapping


def read_class_names(path: str | Path) -> list[str]:
    names = [text for _, text in _lines(Path(path))]
    if len(names) < 2:
        raise DataError(f"{path}: {len(names)} class name(s); expected one name per line for every class")
    return names


# ---- WebVision ----------------------------------------------------------------------------------
def _webvision_names(root: Path, num_classes: int) -> tuple[list[str], dict[str, int]]:
    """Class names and WordNet ids from info/synsets.txt when present (``n01440764 tench, ...``)."""
    path = root / "info" / "synsets.txt"
    if not path.is_file():
        return [str(k) for k in range(num_classes)], {}
    entries = [text.split(None, 1) for _, text in _lines(path)]
    wnids = {parts[0]: k for k, parts in enumerate(entries)}
    names = [parts[-1] for parts in entries[:num_classes]]
    names += [str(k) for k in range(len(names), num_classes)]
    return names, wnids


def _image_files(folder: Path) -> list[str]:
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(str(p) for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions)


def read_imagenet_val(folder: str | Path, num_classes: int, class_names: list[str],
                      wnids: dict[str, int]) -> ImageList:
    """ILSVRC12 val with one sub-folder per class, named by class index (``0/``) or WordNet id; classes < N."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.imagenet_val: {str(folder)!r} is not a folder")
    found: dict[int, Path] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
        if sub.name.isascii() and sub.name.isdigit():
            k = int(sub.name)
        elif sub.name in wnids:
            k = wnids[sub.name]
        else:
            raise DataError(f"data.imagenet_val: sub-folder {sub.name!r} of {folder} is neither a class index "
                            f"(0/, 1/, ...) nor a WordNet id listed in WebVision's info/synsets.txt")
        if k < num_classes:
            found[k] = sub
    # A class without a folder only narrows the second test set; a folder with none is a wrong path.
    if not found:
        raise DataError(f"data.imagenet_val: {folder} has no sub-folder for any class 0..{num_classes - 1}")
    paths, labels = [], []
    for k in sorted(found):
        files = _image_files(found[k])
        paths += files
        labels += [k] * len(files)
    return ImageList(paths, np.asarray(labels, dtype=np.int64), class_names)


def _webvision_split(list_file: Path, image_dir: Path, num_classes: int, names: list[str]) -> ImageList:
    files, labels = read_labelled_list(list_file, WEBVISION_CLASSES)
    keep = np.flatnonzero(labels < num_classes)
    base = str(image_dir)
    return ImageList([os.path.join(base, files[i]) for i in keep], labels[keep], names)


def read_webvision(root: str | Path, num_classes: int, imagenet_val: str | Path | None = None,
                   sources: tuple[str, ...] = ("google",)) -> dict[str, ImageList]:
    """WebVision 1.0 (num_classes=1000) or mini-WebVision (num_classes=50, the Google images).

    Keys: 'train' (info/train_filelist_<source>.txt), 'test' (the WebVision val set) and, with
    `imagenet_val`, 'imagenet' (ILSVRC12 val of the same classes). Samples with label >= num_classes
    are left out. Full WebVision 1.0 training uses sources=("google", "flickr").
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: {str(root)!r} is not a folder "
                        f"(expected WebVision's info/, google/, val_images_256/)")
    if not 2 <= num_classes <= WEBVISION_CLASSES:
        raise DataError(f"data.num_classes: {num_classes} not allowed for WebVision; use 2..{WEBVISION_CLASSES} "
                        f"(50 = mini-WebVision)")
    names, wnids = _webvision_names(root, num_classes)
    parts = [_webvision_split(root / "info" / f"train_filelist_{s}.txt", root, num_classes, names) for s in sources]
    train = ImageList([p for part in parts for p in part.paths],
                      np.concatenate([part.labels for part in parts]), names)
    test = _webvision_split(root / "info" / "val_filelist.txt", root / "val_images_256", num_classes, names)
    out = {"train": train, "test": test}
    if imagenet_val is not None:
        out["imagenet"] = read_imagenet_val(imagenet_val, num_classes, names, wnids)
    return out


# ---- Clothing1M ---------------------------------------------------------------------------------
def _keyed_split(root: Path, key_file: Path, label_file: Path, labels: dict[str, int], names: list[str],
                 skip_unlabelled: bool = False) -> ImageList:
    """Images of a key list with their labels; a key without a label is left out and counted when
    `skip_unlabelled`, otherwise an error naming the line."""
    kept, values, unlabelled = [], [], 0
    for number, key in read_key_list(key_file):
        value = labels.get(key)
        if value is None:
            if not skip_unlabelled:
                raise DataError(f"{key_file} line {number}: key {key!r} has no label in {label_file.name}")
            unlabelled += 1
            continue
        kept.append(key)
        values.append(value)
    base = str(root)
    return ImageList([os.path.join(base, key) for key in kept], np.asarray(values, dtype=np.int64), names,
                     unlabelled=unlabelled)


def read_clothing1m(root: str | Path) -> dict[str, ImageList]:
    """Clothing1M: 'train' = noisy_train_key_list with noisy labels; 'val'/'test' = clean key lists
    with clean labels. Image paths are root/<key>."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: {str(root)!r} is not a folder "
                        f"(expected Clothing1M's *_kv.txt, *_key_list.txt, images/)")
    names = read_class_names(root / "category_names_eng.txt")
    noisy_file, clean_file = root / "noisy_label_kv.txt", root / "clean_label_kv.txt"
    noisy = read_label_map(noisy_file, len(names))
    clean = read_label_map(clean_file, len(names))
    # A training key without a noisy label is one image fewer, like a missing file; the small, curated
    # clean lists must be complete, or the evaluation would quietly change.
    return {
        "train": _keyed_split(root, root / "noisy_train_key_list.txt", noisy_file, noisy, names,
                              skip_unlabelled=True),
        "val": _keyed_split(root, root / "clean_val_key_list.txt", clean_file, clean, names),
        "test": _keyed_split(root, root / "clean_test_key_list.txt", clean_file, clean, names),
    }


# ---- lazy images --------------------------------------------------------------------------------
class FileImages(Dataset):
    """Images decoded from files when asked for; items are (uint8 [3, crop, crop], index, ok).

    ``on_bad_image='skip'``: a file that cannot be read gives a zero image and ok=False (the trainer
    leaves it out and counts it); ``'error'``: it raises DataError naming the file. A file that is not
    a regular file, or has more than ``max_pixels`` pixels, counts as unreadable.
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


# ---- class-balanced subsets (Clothing1M) ----------------------------------------------------------
def class_quotas(counts: np.ndarray, total: int) -> np.ndarray:
    """Samples to draw per class: as equal as possible, a small class gives all it has and the
    shortfall is shared among the others; sums to min(total, counts.sum())."""
    # Smallest classes first: each takes an equal share of what is left, or all it has; the
    # floor-division remainders roll on to the larger classes, so nothing is left over at the end.
    quotas = np.zeros(len(counts), dtype=np.int64)
    remaining = min(int(total), int(counts.sum()))
    order = np.argsort(counts, kind="stable")
    for rank, k in enumerate(order):
        share = remaining // (len(order) - rank)
        quotas[k] = min(int(counts[k]), share)
        remaining -= quotas[k]
    return quotas


def balanced_subset(labels: np.ndarray, num_classes: int, samples_per_epoch: int, seed: int, epoch: int) -> np.ndarray:
    """Shuffled indices of a class-balanced random subset, the same for the same (seed, epoch)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, epoch])
    quotas = class_quotas(np.bincount(labels, minlength=num_classes), samples_per_epoch)
    picked = [rng.choice(np.flatnonzero(labels == k), size=q, replace=False) for k, q in enumerate(quotas) if q]
    return rng.permutation(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


class BalancedSubsetSampler(Sampler):
    """A new class-balanced random subset of the training set each epoch (``set_epoch``).

    Every process draws the same indices for the same epoch, so accelerate can shard the batches.
    """

    def __init__(self, labels, num_classes: int, samples_per_epoch: int, seed: int = 0):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes, self.samples_per_epoch, self.seed = num_classes, samples_per_epoch, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return min(self.samples_per_epoch, len(self.labels))

    def __iter__(self):
        indices = balanced_subset(self.labels, self.num_classes, self.samples_per_epoch, self.seed, self.epoch)
        return iter(indices.tolist())
