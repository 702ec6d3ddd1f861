"""What reaches the network: training batches and their views, and the splits the EM step and evaluation read.

In-memory sets that fit stay on the training device (``DeviceBatches``; views made there in batched kernels);
others come through loader workers, sharded by accelerate — as uint8 images, or with the reference's PIL
views made in the workers (``aug.pipeline=pil``).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .batches import DeviceBatches, LoaderBatches
from ..data.bundle import DataBundle
from ..data.images import TensorImages
from ..errors import DataError
from .loaders import make_train_loader, worker_loader
from .features import Features, extract_on_device, extract_with_loader
from ..reference_views import ReadyViews, ReferenceViewsDataset, reference_transforms
from ..views import Views

# On a GPU, decoded images stay on it when they take at most this share of its memory.
DEVICE_SHARE = 0.25


def keep_on_device(data: DataBundle, wanted: bool | None, device: torch.device) -> bool:
    """``data.on_device``, or by size: in-memory sets on a CPU always (they are in RAM already), on a GPU when
    they fit in a quarter of its memory."""
    in_memory = isinstance(data.train, TensorImages) and all(isinstance(ds, TensorImages)
                                                            for ds, _ in data.eval_sets.values())
    if wanted and not in_memory:
        raise DataError("data.on_device: the images are decoded lazily (more than 4 GiB decoded, or "
                        "data.in_memory=false); set data.in_memory=true to keep them on the device")
    if wanted is not None or not in_memory:
        return bool(wanted)
    if device.type != "cuda":
        return True
    size = sum(ds.images.numel() for ds in (data.train, *(ds for ds, _ in data.eval_sets.values())))
    return size <= DEVICE_SHARE * torch.cuda.get_device_properties(device).total_memory


class Feed:
    def __init__(self, data: DataBundle, cfg, accelerator):
        acc, contract, device = accelerator, data.contract, accelerator.device
        if len(data.train) < cfg.train.batch_size * acc.num_processes:
            raise DataError(f"train.batch_size: {cfg.train.batch_size} per process x {acc.num_processes} process(es) "
                            f"exceeds the {len(data.train)} training samples; lower train.batch_size")
        self.accelerator, self.data = acc, data
        self.workers, self.seed = cfg.data.num_workers, cfg.seed
        self.progress = acc.is_main_process and cfg.log.progress
        self.eval_batch = cfg.train.eval_batch_size or 4 * cfg.train.batch_size
        fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.test_view = Views(contract.size, contract.mean, contract.std, cfg.aug.crop_padding,
                               cfg.aug.strong_scale_min, cfg.aug.hflip, storage_size=contract.storage_size,
                               memory_format=fmt).to(device)
        self.widths = (cfg.model.proj_dim, data.num_classes)
        self.on_device = keep_on_device(data, cfg.data.on_device, device) and cfg.aug.pipeline == "batched"
        if self.on_device:
            images = {"train": data.train.images.to(device)}
            images.update({name: ds.images.to(device) for name, (ds, _) in data.eval_sets.items()})
            sampler = data.train_sampler
            self.train = DeviceBatches(images["train"], data.train.ok, cfg.train.batch_size, cfg.seed, device,
                                       acc.process_index, acc.num_processes,
                                       order=sampler.epoch_indices if sampler is not None else None)
            self.images = images
            self.views = self.test_view
            return
        train_set = data.train
        if cfg.aug.pipeline == "pil":
            padding = self.test_view.padding
            train_set = ReferenceViewsDataset(data.train, *reference_transforms(
                contract.size, contract.storage_size, padding, cfg.aug.strong_scale_min, cfg.aug.hflip,
                contract.mean, contract.std))
        loader = make_train_loader(train_set, data.train_sampler, cfg.train.batch_size, cfg.data.num_workers,
                                   cfg.seed)
        self.train = LoaderBatches(acc.prepare_data_loader(loader, device_placement=False), device, data.train_sampler)
        self.views = ReadyViews() if cfg.aug.pipeline == "pil" else self.test_view

    def _loader(self, dataset, rows: torch.Tensor) -> DataLoader:
        subset = dataset if len(rows) == len(dataset) else Subset(dataset, rows.tolist())
        loader = worker_loader(subset, self.workers, self.seed, batch_size=self.eval_batch, shuffle=False)
        return self.accelerator.prepare_data_loader(loader, device_placement=False)

    def _bar(self, what: str):
        """Wraps an extraction's batches in a progress bar (main process, log.progress), gone when it is done."""
        return lambda batches: tqdm(batches, desc=what, unit="batch", leave=False, disable=not self.progress,
                                    dynamic_ncols=True)

    def _extract(self, model, name: str, dataset, rows: torch.Tensor, what: str) -> Features:
        if self.on_device:
            ok = dataset.ok.to(self.accelerator.device)
            return extract_on_device(model, self.images[name], ok, rows, self.test_view.test, self.eval_batch,
                                     self.widths, self.accelerator, self._bar(what))
        return extract_with_loader(model, self._bar(what)(self._loader(dataset, rows)), rows, self.test_view.test,
                                   self.accelerator)

    def extract_train(self, model: torch.nn.Module, rows: torch.Tensor) -> Features:
        """The EM step's view of the training rows ``rows`` (the test transform, no augmentation)."""
        return self._extract(model, "train", self.data.train, rows, "EM step: train features")

    def extract_evals(self, model: torch.nn.Module) -> dict[str, tuple[Features, torch.Tensor]]:
        """Every held-out set, "test" first: (features, labels on the device)."""
        device = self.accelerator.device
        out = {}
        for name, (dataset, labels) in self.data.eval_sets.items():
            rows = torch.arange(len(dataset), device=device)
            out[name] = (self._extract(model, name, dataset, rows, f"evaluation: {name}"),
                         torch.as_tensor(labels, device=device))
        return out
