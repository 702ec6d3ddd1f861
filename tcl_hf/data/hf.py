"""Datasets through Hugging Face ``datasets``: any hub id, folder in hub layout, parquet/csv/json file, or the
quickstart's digits; small sets are decoded into memory once per machine, larger ones in loader workers."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from .bundle import DataBundle, check_class_count, check_every_class_trained
from .registry import Source, register_source

if TYPE_CHECKING:
    import datasets

    from ..config import DataConfig
    from .contract import InputContract

# Up to this many bytes of decoded images are kept in memory; larger sets decode in loader workers.
IN_MEMORY_BYTES = 4 * 2**30

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

def read_dataset(path: str, *args, **kwargs) -> datasets.DatasetDict:
    """``datasets.load_dataset(*args, **kwargs)`` (``path`` by default), its failures as one line naming
    ``data.path``."""
    import datasets

    try:
        return datasets.load_dataset(*(args or (path,)), **kwargs)
    except FileNotFoundError as exc:
        raise DataError(f"data.path: cannot find dataset {path!r} ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # datasets raises many types for a missing hub id or unreadable folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data.path: cannot load dataset {path!r}: {first}") from None

def _load_dataset_dict(path: str) -> datasets.DatasetDict:
    local = Path(path)
    if local.is_file():
        kind = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}.get(local.suffix)
        if kind is None:
            raise DataError(f"data.path: {path!r} is a file of an unsupported type; use parquet, csv or json")
        return read_dataset(path, kind, data_files={"train": str(local)})
    return read_dataset(path)

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

def _test_split(dsd, data_cfg: DataConfig):
    """The test split that data.test_split names, or None when data.test_fraction holds one out of training."""
    name, splits = data_cfg.test_split, ", ".join(dsd)
    if data_cfg.test_fraction is None and name not in dsd:
        raise DataError(f"data.test_split: split {name!r} not in the dataset (splits: {splits}); name one, or set "
                        f"data.test_fraction (e.g. 0.2) to hold out a class-stratified part of the training split")
    if data_cfg.test_fraction is not None and name in dsd:
        # Evaluating on a hold-out while the data has its own test split would quietly change the benchmark.
        raise DataError(f"data.test_fraction: the dataset has a test split {name!r}; drop data.test_fraction to "
                        f"use it, or set data.test_split to a split it lacks (splits: {splits})")
    return dsd[name] if name in dsd else None

def _hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) row indices, each in row order: a seeded, class-stratified ``fraction`` held out."""
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as exc:  # a class with one row, or fewer held-out rows than classes
        raise DataError(f"data.test_fraction: cannot hold out {fraction} of {len(labels)} training rows with every "
                        f"class on both sides ({str(exc).splitlines()[0]})") from None
    return np.sort(kept), np.sort(held)

def _named_classes(train, test, column: str) -> tuple:
    """(train, test) with a label column of strings turned into class ids: the sorted distinct strings of both
    splits are the class names (``test`` may be None)."""
    import datasets

    feature = train.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        return train, test
    splits = [train] if test is None else [train, test]
    found = {value for split in splits for value in split.unique(column)}
    if None in found or "" in found:
        raise DataError(f"data.label_column: column {column!r} has rows without a label; give every row one")
    names = datasets.ClassLabel(names=sorted(found))
    return train.cast_column(column, names), None if test is None else test.cast_column(column, names)

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

def digits_dataset_dict(seed: int = 0) -> datasets.DatasetDict:
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


def check_data_path(path: str) -> None:
    """Refuse a ``data.path`` that names a local file or folder which is not there, before any heavy import; a Hub
    id is left to the loader (only it can ask the Hub). A path counts as local when it could not be a Hub id
    (namespace/name), starts like a path (., ~), names a data file (.parquet, .csv, .json) or its parent folder
    exists here (data/my_set)."""
    if Path(path).expanduser().exists():
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(path)
        hub_like = path.count("/") <= 1
    except HFValidationError:
        hub_like = False
    parent = Path(path).parent
    local = (path.startswith((".", "~")) or Path(path).suffix in (".parquet", ".csv", ".json", ".jsonl")
             or (parent != Path(".") and parent.is_dir()))
    if hub_like and not local:
        return
    raise ConfigError(f"data.path: {path!r} is not an existing file or folder (and reads as a local path, not a Hub "
                      f"dataset id namespace/name); give a folder in hub layout, a parquet/csv/json file or a Hub id")


def is_local_path(value: str) -> bool:
    """A path on this machine rather than a Hub id (``namespace/name`` never starts with / . or ~)."""
    return os.path.isabs(value) or value.startswith((".", "~")) or Path(value).exists()


def path_names(path: str) -> tuple[str, str, str | None]:
    """A card's (display name, type, Hub id or None) of data.path: a local folder or file by its base name."""
    if is_local_path(path):
        return Path(path).name, Path(path).name, None
    return path, path, path


def load_hf(data_cfg: DataConfig, contract: InputContract, seed: int, dsd: datasets.DatasetDict,
            progress: bool = False) -> DataBundle:
    """The splits of ``dsd`` that ``data_cfg`` names, as a ``DataBundle``; ``progress``: a bar while decoding."""
    import datasets

    # The decoders and samplers pull in torch; the registry's sources stay light until data is read.
    from ..feeding.sampler import stratified_sample
    from .decoded import decode_split, split_channel_stats
    from .images import HFImages, TensorImages

    train = _split(dsd, data_cfg.train_split, "data.train_split")
    test = _test_split(dsd, data_cfg)
    image_col = _pick_column(train.features, data_cfg.image_column, "image", "data.image_column")
    label_col = _pick_column(train.features, data_cfg.label_column, "label", "data.label_column")
    full_train_size = len(train)
    if len(train) == 0 or (test is not None and len(test) == 0):
        raise DataError(f"data.path: {data_cfg.path!r} has an empty {'train' if len(train) == 0 else 'test'} split")
    train, test = _named_classes(train, test, label_col)

    train_labels = _labels(train, label_col, "data.label_column")
    train_indices = None  # the rows of the full train split trained on; None = all
    if test is None:
        train_indices, held = _hold_out(train_labels, data_cfg.test_fraction, seed)
        test, train = train.select(held), train.select(train_indices)
        test_labels, train_labels = train_labels[held], train_labels[train_indices]
    else:
        test_labels = _labels(test, label_col, "data.label_column")
    if data_cfg.limit:
        # Rows are often sorted by class (an imagefolder is): the first N could hold a class or two.
        drawn = stratified_sample(train_labels, data_cfg.limit, seed)
        test_indices = stratified_sample(test_labels, data_cfg.limit, seed)
        train_indices = drawn if train_indices is None else train_indices[drawn]
        train, train_labels = train.select(drawn), train_labels[drawn]
        test, test_labels = test.select(test_indices), test_labels[test_indices]
    clean = None
    if data_cfg.clean_label_column:
        clean_col = _pick_column(train.features, data_cfg.clean_label_column, "label", "data.clean_label_column")
        clean = _labels(train, clean_col, "data.clean_label_column")
    feature = train.features[label_col]
    num_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else int(train_labels.max()) + 1
    if num_classes < 2:
        raise DataError(f"data.label_column: {label_col!r} has {num_classes} class; TCL needs at least 2")
    check_class_count(data_cfg.num_classes, num_classes, f"label column {label_col!r}")
    for name, labels in (("train", train_labels), ("test", test_labels)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(f"data.label_column: {name} labels span [{labels.min()}, {labels.max()}], "
                            f"allowed 0..{num_classes - 1}")
    class_names = _class_names(train.features, label_col, num_classes)
    check_every_class_trained(train_labels, class_names, "data.label_column", data_cfg.limit)

    storage = contract.storage_size
    in_memory = data_cfg.in_memory
    if in_memory is None:
        in_memory = (len(train) + len(test)) * storage * storage * 3 <= IN_MEMORY_BYTES
    if in_memory:
        train_images, train_ok = decode_split(train, image_col, contract.train_decoding, data_cfg.on_bad_image,
                                              data_cfg.max_image_pixels, "decoding train" if progress else None,
                                              stats=contract.mean is None)
        test_images, test_ok = decode_split(test, image_col, contract.eval_decoding, data_cfg.on_bad_image,
                                            data_cfg.max_image_pixels, "decoding test" if progress else None)
        if contract.mean is None:
            contract = contract.with_stats(*split_channel_stats(train, image_col, contract.train_decoding,
                                                                data_cfg.on_bad_image, data_cfg.max_image_pixels,
                                                                train_images, train_ok))
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
        num_classes=num_classes, class_names=class_names,
        contract=contract, full_train_size=full_train_size, train_indices=train_indices, train_rows=train,
    )


@register_source("hf")
class HFSource(Source):
    is_hf_dataset = True
    # The TCL paper's Table 2 (CIFAR-10/100 through their Hub datasets), by recipe stem.
    paper_test_acc = {
        "cifar10_sym20": 95.0, "cifar10_sym50": 93.9, "cifar10_sym80": 92.5, "cifar10_sym90": 89.4,
        "cifar10_asym40": 92.6,
        "cifar100_sym20": 78.0, "cifar100_sym50": 73.3, "cifar100_sym80": 65.0, "cifar100_sym90": 54.5,
    }

    def check(self, data_cfg):
        check_data_path(data_cfg.path)

    def load(self, data_cfg, contract, seed, progress=False):
        return load_hf(data_cfg, contract, seed, _load_dataset_dict(data_cfg.path), progress)

    def dataset_names(self, data):
        return path_names(str(data.get("path")))


@register_source("digits")
class DigitsSource(Source):
    """The quickstart's data, built in: no path, no download."""

    def check(self, data_cfg):
        pass

    def load(self, data_cfg, contract, seed, progress=False):
        return load_hf(data_cfg, contract, seed, digits_dataset_dict(), progress)

    def dataset_names(self, data):
        return "scikit-learn digits", self.name, None

    def image_rows(self, bundle):
        return bundle.train_rows.select_columns(["image"])
