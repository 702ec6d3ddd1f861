"""WebVision 1.0 / mini-WebVision from its standard layout, with ILSVRC12 val of the same classes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .lists import ImageList, _lines, read_labelled_list
from .registry import Source, register_source

WEBVISION_CLASSES = 1000

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


@register_source("webvision")
class WebVisionSource(Source):
    # Top-1 on the WebVision val set of mini-WebVision, as our test_acc.
    paper_test_acc = {"webvision": 79.1}

    def load(self, data_cfg, contract, seed, progress=False):  # decoded lazily, in the loaders
        from .hf import IMAGENET_MEAN, IMAGENET_STD
        from .load import load_file_lists

        lists = read_webvision(data_cfg.root, data_cfg.num_classes or 50, data_cfg.imagenet_val)
        return load_file_lists(data_cfg, contract, seed, lists, (IMAGENET_MEAN, IMAGENET_STD), ("imagenet",))

    def dataset_names(self, data):
        mini = data.get("num_classes") == 50
        return ("mini-WebVision" if mini else "WebVision 1.0"), self.name, None
