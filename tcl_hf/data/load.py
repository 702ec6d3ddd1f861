"""A dataset read from its file lists (WebVision, Clothing1M): the splits as a ``DataBundle``, decoded lazily."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import DataError
from ..feeding.sampler import BalancedSubsetSampler, stratified_sample
from .bundle import DataBundle, check_every_class_trained
from .contract import InputContract
from .images import FileImages

if TYPE_CHECKING:
    from ..config import DataConfig
    from .lists import ImageList


def load_file_lists(data_cfg: DataConfig, contract: InputContract, seed: int, lists: dict[str, ImageList],
                    default_stats: tuple, extra_names: tuple[str, ...]) -> DataBundle:
    """A dataset read from its file lists (``lists``: split name -> list, "train" and "test" among them),
    decoded lazily in loader workers; ``default_stats`` are its published mean and std, ``extra_names``
    the further splits evaluated beside "test"."""
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
