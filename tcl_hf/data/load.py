"""``load_data``: the splits named by ``data.*``, decoded as the input contract says, as a ``DataBundle``."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import DataError
from .bundle import DataBundle, check_class_count, check_every_class_trained
from .contract import InputContract
from .clothing1m import CLOTHING1M_MEAN, CLOTHING1M_STD, read_clothing1m
from .hf import IMAGENET_MEAN, IMAGENET_STD, load_hf
from .images import FileImages
from .sampler import BalancedSubsetSampler, stratified_sample
from .webvision import read_webvision

if TYPE_CHECKING:
    from ..config import DataConfig

def load_data(data_cfg: DataConfig, contract: InputContract, seed: int = 0, progress: bool = False) -> DataBundle:
    """Read the splits named by the config, decoded as ``contract`` says; a contract without mean/std
    gets the data's own statistics (in-memory sets) or the dataset's published ones. ``progress``: a bar for
    the decoding of in-memory sets (file lists decode lazily, in the loaders)."""
    if data_cfg.format in ("webvision", "clothing1m"):
        return _load_file_lists(data_cfg, contract, seed)
    return load_hf(data_cfg, contract, seed, progress)

def _load_file_lists(data_cfg, contract: InputContract, seed: int) -> DataBundle:
    """WebVision / Clothing1M from their standard layouts, decoded lazily in loader workers."""
    if data_cfg.format == "webvision":
        lists = read_webvision(data_cfg.root, data_cfg.num_classes or 50, data_cfg.imagenet_val)
        default_stats, extra_names = (IMAGENET_MEAN, IMAGENET_STD), ("imagenet",)
    else:
        lists = read_clothing1m(data_cfg.root)
        check_class_count(data_cfg.num_classes, lists["train"].num_classes, "category_names_eng.txt")
        default_stats, extra_names = (CLOTHING1M_MEAN, CLOTHING1M_STD), ("val",)
    full_train_size, unlabelled = len(lists["train"]), lists["train"].unlabelled
    for name, lst in lists.items():
        if len(lst) == 0:
            raise DataError(f"data.root: the {name} split of {data_cfg.root} is empty")
    drawn = {}
    if data_cfg.limit:
        # List files are sorted by class, so the first N lines would be one class.
        drawn = {name: stratified_sample(lst.labels, data_cfg.limit, seed) for name, lst in lists.items()}
        lists = {name: lst.subset(drawn[name]) for name, lst in lists.items()}
    check_every_class_trained(lists["train"].labels, list(lists["train"].class_names), "data.root", data_cfg.limit)

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
        contract=contract, full_train_size=full_train_size, train_indices=drawn.get("train"),
        extra_evals={name: (images(name), lists[name].labels) for name in extra_names if name in lists},
        train_sampler=sampler, unlabelled=unlabelled,
    )
