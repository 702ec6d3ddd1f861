"""Clothing1M from its standard layout: noisy training keys with shop labels, clean val/test keys."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .lists import ImageList, read_class_names, read_key_list, read_label_map
from .registry import Source, register_source

# Per-channel statistics for normalisation; a million files are too many to measure at start-up.
CLOTHING1M_MEAN, CLOTHING1M_STD = (0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214)

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


@register_source("clothing1m")
class Clothing1MSource(Source):
    # Accuracy on its clean test set.
    paper_test_acc = {"clothing1m": 74.8}

    def load(self, data_cfg, contract, seed, progress=False):  # decoded lazily, in the loaders
        from .bundle import check_class_count
        from .load import load_file_lists

        lists = read_clothing1m(data_cfg.root)
        check_class_count(data_cfg.num_classes, lists["train"].num_classes, "category_names_eng.txt")
        return load_file_lists(data_cfg, contract, seed, lists, (CLOTHING1M_MEAN, CLOTHING1M_STD), ("val",))

    def dataset_names(self, data):
        return "Clothing1M", self.name, None
