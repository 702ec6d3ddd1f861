"""List files of the real-world noisy datasets (WebVision, Clothing1M): ``<file> <label>`` lines, key lists,
label maps and class names, read into ``ImageList`` splits (absolute paths + integer labels + class names).

Every path a list file names must be relative, without '..' (see ``_listed_path``); a malformed line
stops the run naming the file and line.
"""
from __future__ import annotations

from collections.abc import Sequence

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

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

    def subset(self, indices: Sequence[int]) -> "ImageList":
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
