"""Datasets through Hugging Face ``datasets``: read a split, decode its images once to a uint8
tensor at the training size, and hand out ``(image, index)`` pairs.

Labels never travel with the images: the trainer looks up the given (possibly noisy) label by
index, so the clean labels kept for measuring detection cannot leak into the loss.
"""
from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset, Sampler

from .config import MAX_IMAGE_PIXELS
from .contract import Decoding, InputContract
from .errors import DataError

# Web crawls hold truncated JPEGs that still decode usefully.
ImageFile.LOAD_TRUNCATED_IMAGES = True


# Up to this many bytes of decoded images are kept in memory; larger sets decode in loader workers.
IN_MEMORY_BYTES = 4 * 2**30
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
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
    extra_evals: dict = field(default_factory=dict)  # more test sets: name -> (Dataset, labels), e.g. "val"
    train_sampler: Sampler | None = None             # e.g. a class-balanced subset per epoch
    unlabelled: int = 0                              # listed training images left out: no label for them

    @property
    def eval_sets(self) -> dict:
        """Every held-out set by name, "test" first."""
        return {"test": (self.test, self.test_labels), **self.extra_evals}


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
    w, h = image.size
    short, long = min(w, h), max(w, h)
    if short != decoding.resize:
        new_long = int(decoding.resize * long / short)
        size = (decoding.resize, new_long) if w <= h else (new_long, decoding.resize)
        image = image.resize(size, str_to_pil_interp(decoding.interpolation))
    w, h = image.size
    left, top = int(round((w - decoding.crop) / 2.0)), int(round((h - decoding.crop) / 2.0))
    if (left, top, w, h) != (0, 0, decoding.crop, decoding.crop):
        image = image.crop((left, top, left + decoding.crop, top + decoding.crop))
    return np.asarray(image, dtype=np.uint8)


def _open(cell, max_pixels: int) -> Image.Image:
    """A datasets Image cell read with decode=False: {'bytes': ..., 'path': ...}, opened (header only)
    and checked against the pixel cap before anything is decoded."""
    if cell.get("bytes"):
        image = Image.open(io.BytesIO(cell["bytes"]))
    else:
        # Opening a FIFO waits for a writer, i.e. forever; stat answers at once, for any kind of file.
        if not stat.S_ISREG(os.stat(cell["path"]).st_mode):
            raise ValueError("not a regular file")
        image = Image.open(cell["path"])
    width, height = image.size  # from the header: Image.open is lazy
    if width * height > max_pixels:
        image.close()
        raise ValueError(f"{width}x{height} pixels, over data.max_image_pixels={max_pixels}")
    return image


def decode_cell(cell, decoding: Decoding, on_bad_image: str = "error",
                max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, bool]:
    """One undecoded image cell -> (RGB uint8 [crop, crop, 3], ok); an unreadable one (missing, not
    a regular file, over `max_pixels`, undecodable) is zeros with ok=False, or a DataError naming
    it when on_bad_image='error'."""
    try:
        return to_rgb_array(_open(cell, max_pixels), decoding), True
    except BAD_IMAGE_ERRORS as exc:
        where = cell.get("path") or "an embedded image"
        if on_bad_image == "error":
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"image {where}: cannot be read ({reason}); "
                            f"set data.on_bad_image=skip to leave such files out") from None
        return np.zeros((decoding.crop, decoding.crop, 3), dtype=np.uint8), False


def decode_images(cells, decoding: Decoding, on_bad_image: str = "error",
                  max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a column of undecoded image cells into uint8 [N, 3, crop, crop] and an ok mask [N]."""
    out = np.empty((len(cells), decoding.crop, decoding.crop, 3), dtype=np.uint8)
    ok = np.ones(len(cells), dtype=bool)
    for i, cell in enumerate(cells):
        out[i], ok[i] = decode_cell(cell, decoding, on_bad_image, max_pixels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(ok)


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


def load_data(data_cfg, contract: InputContract, seed: int = 0) -> DataBundle:
    """Read the splits named by the config, decoded as ``contract`` says; a contract without mean/std
    gets the data's own statistics (in-memory sets) or the dataset's published ones."""
    if data_cfg.format in ("webvision", "clothing1m"):
        return _load_file_lists(data_cfg, contract, seed)
    return _load_hf(data_cfg, contract)


def _load_hf(data_cfg, contract: InputContract) -> DataBundle:
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

    storage = contract.storage_size
    in_memory = data_cfg.in_memory
    if in_memory is None:
        in_memory = (len(train) + len(test)) * storage * storage * 3 <= IN_MEMORY_BYTES
    if in_memory:
        raw = datasets.Image(decode=False)
        train_images, train_ok = decode_images(train.cast_column(image_col, raw)[image_col],
                                               contract.train_decoding, data_cfg.on_bad_image,
                                               data_cfg.max_image_pixels)
        test_images, test_ok = decode_images(test.cast_column(image_col, raw)[image_col],
                                             contract.eval_decoding, data_cfg.on_bad_image,
                                             data_cfg.max_image_pixels)
        if contract.mean is None:
            contract = contract.with_stats(*channel_stats(train_images[train_ok]))
        train_set, test_set = TensorImages(train_images, train_ok), TensorImages(test_images, test_ok)
    else:
        train_set = HFImages(train, image_col, contract.train_decoding, data_cfg.on_bad_image,
                             data_cfg.max_image_pixels)
        test_set = HFImages(test, image_col, contract.eval_decoding, data_cfg.on_bad_image,
                            data_cfg.max_image_pixels)
        if contract.mean is None:
            contract = contract.with_stats(IMAGENET_MEAN, IMAGENET_STD)
    return DataBundle(
        train=train_set, test=test_set,
        train_labels=train_labels, test_labels=test_labels, clean_train_labels=clean,
        num_classes=num_classes, class_names=_class_names(train.features, label_col, num_classes),
        contract=contract, full_train_size=full_train_size,
    )


def _load_file_lists(data_cfg, contract: InputContract, seed: int) -> DataBundle:
    """WebVision / Clothing1M from their standard layouts, decoded lazily in loader workers."""
    from .formats import (CLOTHING1M_MEAN, CLOTHING1M_STD, BalancedSubsetSampler, FileImages, read_clothing1m,
                          read_webvision)

    if data_cfg.format == "webvision":
        lists = read_webvision(data_cfg.root, data_cfg.num_classes or 50, data_cfg.imagenet_val)
        default_stats, extra_names = (IMAGENET_MEAN, IMAGENET_STD), ("imagenet",)
    else:
        lists = read_clothing1m(data_cfg.root)
        default_stats, extra_names = (CLOTHING1M_MEAN, CLOTHING1M_STD), ("val",)
    full_train_size, unlabelled = len(lists["train"]), lists["train"].unlabelled
    if data_cfg.limit:
        # List files are sorted by class, so the first N lines would be one class: take a seeded sample.
        rng = np.random.default_rng(seed)
        lists = {name: lst.subset(np.sort(rng.permutation(len(lst))[:data_cfg.limit])) for name, lst in lists.items()}
    for name, lst in lists.items():
        if len(lst) == 0:
            raise DataError(f"data.root: the {name} split of {data_cfg.root} is empty")

    def images(name: str) -> FileImages:
        decoding = contract.train_decoding if name == "train" else contract.eval_decoding
        return FileImages(lists[name].paths, decoding, data_cfg.on_bad_image, max_pixels=data_cfg.max_image_pixels)

    train, test = lists["train"], lists["test"]
    sampler = None
    if data_cfg.samples_per_epoch:
        sampler = BalancedSubsetSampler(train.labels, train.num_classes, data_cfg.samples_per_epoch, seed)
    if contract.mean is None:
        contract = contract.with_stats(*default_stats)
    return DataBundle(
        train=images("train"), test=images("test"),
        train_labels=train.labels, test_labels=test.labels, clean_train_labels=None,
        num_classes=train.num_classes, class_names=list(train.class_names),
        contract=contract, full_train_size=full_train_size,
        extra_evals={name: (images(name), lists[name].labels) for name in extra_names if name in lists},
        train_sampler=sampler, unlabelled=unlabelled,
    )
