"""What a loaded dataset is for the trainer: the splits, their labels and the input contract."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from torch.utils.data import Dataset, Sampler

    from .contract import InputContract

# The column a 🤗 dataset names its samples by, when it has one.
ID_COLUMN = "id"


def _is_under(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root)


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    train_labels: np.ndarray          # labels as the dataset gives them (the ones to train on, before synthetic noise)
    test_labels: np.ndarray
    clean_train_labels: np.ndarray | None  # known clean labels (synthetic noise, or a clean column), else None
    num_classes: int
    class_names: list[str]
    contract: InputContract           # the preprocessing, mean and std included
    full_train_size: int              # rows in the train split before data.limit (label files must match it)
    train_indices: np.ndarray | None = None          # rows of the full train split trained on (data.limit's draw,
                                                     # data.test_fraction's kept part); None = all
    extra_evals: dict = field(default_factory=dict)  # more test sets: name -> (Dataset, labels), e.g. "val"
    train_sampler: Sampler | None = None             # e.g. a class-balanced subset per epoch
    unlabelled: int = 0                              # listed training images left out: no label for them
    train_rows: object = None                        # hf formats: the training split as loaded, every column

    @property
    def eval_sets(self) -> dict:
        """Every held-out set by name, "test" first."""
        return {"test": (self.test, self.test_labels), **self.extra_evals}

    def sample_counts(self, bad: dict[str, int]) -> dict[str, int]:
        """Usable images per split (listed and labelled, minus the ``bad`` unreadable ones) and the bad total."""
        sizes = {"train": len(self.train), **{name: len(ds) for name, (ds, _) in self.eval_sets.items()}}
        counts = {f"{name}_samples": size - bad.get(name, 0) for name, size in sizes.items()}
        unlabelled = {"unlabelled": self.unlabelled} if self.unlabelled else {}
        return {**counts, "bad_images": sum(bad.values()), **unlabelled}

    def train_ids(self, root: str | None = None) -> np.ndarray:
        """The dataset's own name for each training row: the file path (relative to ``root`` when under it) for
        file lists; for a 🤗 split its ``id`` column, else its image files (an image folder, a list of paths: relative
        to ``root``, or to its folder when ``root`` is a list file; a file elsewhere by its name only, so no local
        path reaches a published report), else the row of the full split (``data.limit`` draws rows)."""
        paths = getattr(self.train, "path", None)
        if paths is not None:
            names = [paths(i) for i in range(len(self.train))]
            if root:
                names = [os.path.relpath(name, root) if _is_under(name, root) else name for name in names]
            return np.asarray(names, dtype=object)
        rows = self.train_rows
        if rows is not None and ID_COLUMN in getattr(rows, "column_names", ()):
            return np.asarray(rows[ID_COLUMN], dtype=object)
        files = _image_files(rows) if rows is not None else None
        if files is not None:
            base = os.path.dirname(root) if root and os.path.isfile(root) else root
            return np.asarray([os.path.relpath(f, base) if base and os.path.isabs(f) and _is_under(f, base)
                               else os.path.basename(f) for f in files], dtype=object)
        return self.train_indices if self.train_indices is not None else np.arange(len(self.train))


def _image_files(rows) -> list[str] | None:
    """The file each row's image was read from, when the split has one image column whose every cell names a
    distinct file (an image folder, a list of paths); None otherwise (bytes without names, CIFAR's parquet)."""
    import datasets

    columns = [name for name, kind in rows.features.items() if isinstance(kind, datasets.Image)]
    if len(columns) != 1:
        return None
    cells = rows.select_columns(columns).cast_column(columns[0], datasets.Image(decode=False)).with_format("arrow")
    files = []
    for batch in cells.iter(batch_size=4096):  # the names only: the image bytes stay in the arrow buffers
        files.extend(batch[columns[0]].combine_chunks().field("path").to_pylist())
    return files if all(files) and len(set(files)) == len(files) else None


def check_class_count(declared: int | None, found: int, where: str) -> None:
    """A recipe's ``data.num_classes`` must be the data's own count: a recipe for other data stops here."""
    if declared is not None and declared != found:
        raise DataError(f"data.num_classes: the recipe says {declared} classes but the data has {found} ({where}); "
                        f"use a recipe for this dataset, or set data.num_classes={found}")


def check_every_class_trained(labels: np.ndarray, class_names: list[str], key: str, limit: int | None) -> None:
    """Refuse training labels that leave a class without a sample: the classifier, the EM step and the collapse
    signals all need one per class. ``key`` names the setting at fault when ``data.limit`` is not the cause."""
    missing = np.flatnonzero(np.bincount(labels, minlength=len(class_names)) == 0)
    if not missing.size:
        return
    shown = ", ".join(class_names[k] for k in missing[:10]) + (f", ... ({missing.size - 10} more)" if missing.size > 10
                                                             else "")
    where = f"data.limit={limit}: the training sample" if limit else f"{key}: the training split"
    hint = "raise data.limit" if limit else "give every class at least one training image, or leave it out"
    raise DataError(f"{where} has no image of {missing.size} of {len(class_names)} classes ({shown}); every class "
                    f"needs a training sample — {hint}")
