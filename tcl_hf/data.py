"""Datasets through Hugging Face ``datasets``: read a split, decode its images once to a uint8
tensor at the training size, and hand out ``(image, index)`` pairs.

Labels never travel with the images: the trainer looks up the given (possibly noisy) label by
index, so the clean labels kept for measuring detection cannot leak into the loss.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from .errors import DataError

# Web crawls hold truncated JPEGs that still decode usefully.
ImageFile.LOAD_TRUNCATED_IMAGES = True


class TensorImages(Dataset):
    """Decoded images held in memory as uint8 [N, C, H, W]; items are (image, index)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        return self.images[index], index


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    train_labels: np.ndarray          # labels as the dataset gives them (the ones to train on, before synthetic noise)
    test_labels: np.ndarray
    clean_train_labels: np.ndarray | None  # known clean labels (synthetic noise, or a clean column), else None
    num_classes: int
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    full_train_size: int              # rows in the train split before data.limit (label files must match it)


def to_rgb_array(image: Image.Image, size: int) -> np.ndarray:
    """Any PIL image -> RGB uint8 [size, size, 3]: shorter side resized to `size`, then centre-cropped."""
    image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def _open(cell) -> Image.Image:
    """A datasets Image cell read with decode=False: {'bytes': ..., 'path': ...}."""
    if cell.get("bytes"):
        return Image.open(io.BytesIO(cell["bytes"]))
    return Image.open(cell["path"])


def decode_images(cells, size: int) -> torch.Tensor:
    """Decode a column of undecoded image cells into one uint8 tensor [N, 3, size, size]."""
    out = np.empty((len(cells), size, size, 3), dtype=np.uint8)
    for i, cell in enumerate(cells):
        out[i] = to_rgb_array(_open(cell), size)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def channel_stats(images: torch.Tensor) -> tuple[tuple, tuple]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.float().div(255.0)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


def _load_dataset_dict(path: str):
    import datasets

    local = Path(path)
    try:
        if local.is_file():
            kind = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}.get(local.suffix)
            if kind is None:
                raise DataError(f"data.path: {path!r} is a file of an unsupported type; use parquet, csv or json")
            return datasets.load_dataset(kind, data_files={"train": str(local)})
        return datasets.load_dataset(path)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"data.path: cannot find dataset {path!r} ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # datasets raises many types for a missing hub id or unreadable folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data.path: cannot load dataset {path!r}: {first}") from None


def _pick_column(features, wanted: str | None, kind: str, key: str) -> str:
    import datasets

    if wanted is not None:
        if wanted not in features:
            raise DataError(f"{key}: column {wanted!r} not in the dataset; columns: {', '.join(features)}")
        return wanted
    feature_type = datasets.Image if kind == "image" else datasets.ClassLabel
    for name, feature in features.items():
        if isinstance(feature, feature_type):
            return name
    raise DataError(f"{key}: no {kind} column found automatically; columns: {', '.join(features)} — set {key}")


def _split(dsd, name: str, key: str):
    if name not in dsd:
        raise DataError(f"{key}: split {name!r} not in the dataset; splits: {', '.join(dsd)}")
    return dsd[name]


def _labels(split, column: str, key: str) -> np.ndarray:
    labels = np.asarray(split[column])
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{key}: column {column!r} holds {labels.dtype} values; expected integer class indices")
    return labels.astype(np.int64)


def _class_names(features, column: str, num_classes: int) -> list[str]:
    import datasets

    feature = features[column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [str(k) for k in range(num_classes)]


def digits_dataset_dict(seed: int = 0):
    """scikit-learn's 1,797 handwritten 8x8 digits as a datasets DatasetDict (stratified 80/20 split)."""
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(k) for k in range(10)])})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(p, mode="L") for p in pixels],
                                     "label": digits.target.tolist()}, features=features)
    return ds.train_test_split(test_size=0.2, seed=seed, stratify_by_column="label")


def load_data(data_cfg, image_size: int, mean=None, std=None) -> DataBundle:
    """Read the train and test splits named by the config and decode them at `image_size`.

    `mean`/`std` default to the training images' own statistics.
    """
    import datasets

    if data_cfg.format == "digits":
        dsd = digits_dataset_dict()
    else:
        dsd = _load_dataset_dict(data_cfg.path)
    train = _split(dsd, data_cfg.train_split, "data.train_split")
    test = _split(dsd, data_cfg.test_split, "data.test_split")
    image_col = _pick_column(train.features, data_cfg.image_column, "image", "data.image_column")
    label_col = _pick_column(train.features, data_cfg.label_column, "label", "data.label_column")
    full_train_size = len(train)
    if data_cfg.limit:
        train = train.select(range(min(data_cfg.limit, len(train))))
        test = test.select(range(min(data_cfg.limit, len(test))))
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"data.path: {data_cfg.path!r} has an empty {'train' if len(train) == 0 else 'test'} split")

    train_labels = _labels(train, label_col, "data.label_column")
    test_labels = _labels(test, label_col, "data.label_column")
    clean = None
    if data_cfg.clean_label_column:
        clean_col = _pick_column(train.features, data_cfg.clean_label_column, "label", "data.clean_label_column")
        clean = _labels(train, clean_col, "data.clean_label_column")
    feature = train.features[label_col]
    num_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else int(train_labels.max()) + 1
    if num_classes < 2:
        raise DataError(f"data.label_column: {label_col!r} has {num_classes} class; TCL needs at least 2")
    for name, labels in (("train", train_labels), ("test", test_labels)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(f"data.label_column: {name} labels span [{labels.min()}, {labels.max()}], "
                            f"allowed 0..{num_classes - 1}")

    raw = datasets.Image(decode=False)
    train_images = decode_images(train.cast_column(image_col, raw)[image_col], image_size)
    test_images = decode_images(test.cast_column(image_col, raw)[image_col], image_size)
    if mean is None:
        mean, std = channel_stats(train_images)
    return DataBundle(
        train=TensorImages(train_images), test=TensorImages(test_images),
        train_labels=train_labels, test_labels=test_labels, clean_train_labels=clean,
        num_classes=num_classes, class_names=_class_names(train.features, label_col, num_classes),
        mean=tuple(mean), std=tuple(std), image_size=image_size, full_train_size=full_train_size,
    )
