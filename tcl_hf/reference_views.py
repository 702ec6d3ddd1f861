"""The reference's views, image by image with torchvision's PIL transforms in loader workers (spec section 3).

``aug.pipeline=pil`` trains with them: slow (a few hundred images per second per CPU core), kept to check
that the batched views change nothing and for the reference-style benchmark.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms as T
from torch.utils.data import Dataset


def reference_transforms(size: int, storage_size: int, padding: int, strong_scale_min: float, hflip: bool,
                         mean: Sequence[float], std: Sequence[float]) -> tuple[T.Compose, T.Compose]:
    """(weak, strong) as the reference composes them; a stored image larger than ``size`` gets a crop inside
    it instead of padding (ImageNet style, as the batched views)."""
    flip = [T.RandomHorizontalFlip()] if hflip else []
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    crop = T.RandomCrop(size, padding=padding) if storage_size == size else T.RandomCrop(size)
    weak = T.Compose([*flip, crop, *finish])
    strong = T.Compose([T.RandomResizedCrop(size, scale=(strong_scale_min, 1.0)), *flip,
                        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                        T.RandomSolarize(threshold=128, p=0.5), *finish])
    return weak, strong


class ReferenceViewsDataset(Dataset):
    """Items ``((weak, strong, strong), index, ok)`` of a dataset whose items are (uint8 image, index, ok)."""

    def __init__(self, images: Dataset, weak: T.Compose, strong: T.Compose):
        self.images, self.weak, self.strong = images, weak, strong

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, index, ok = self.images[index]
        pil = T.functional.to_pil_image(image)
        return (self.weak(pil), self.strong(pil), self.strong(pil)), index, ok


class ReadyViews:
    """The step's view maker when the loader already made the views."""

    @staticmethod
    def weak(views: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return views[0]

    @staticmethod
    def three(views: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return views
