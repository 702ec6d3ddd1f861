"""TCL's image views, computed on batches on the training device (kornia, per-sample parameters).

Images arrive as uint8 [B, C, H, W] at the training size; the loader only stacks them, so the
augmentation cost scales with the accelerator rather than with CPU loader workers.
"""
from __future__ import annotations

import kornia.augmentation as K
import torch
import torch.nn as nn


class Views(nn.Module):
    """Weak view (crop + flip), strong view (spec section 3) and the test view (centre crop).

    Solarize keeps a fixed threshold of 0.5 (128/255), as the reference's PIL pipeline does;
    kornia would otherwise randomize it.
    """

    def __init__(self, size: int, mean, std, padding: int | None = None, strong_scale_min: float = 0.2,
                 hflip: bool = True, storage_size: int | None = None):
        super().__init__()
        self.size = size
        self.storage_size = storage_size or size
        flip = [K.RandomHorizontalFlip()] if hflip else []
        if self.storage_size == size:
            # Small images (CIFAR): pad-and-crop, as the reference (4 px at 32 px).
            padding = max(1, size // 8) if padding is None else padding
            self.weak_aug = nn.Sequential(*flip, K.RandomCrop((size, size), padding=padding))
        else:
            # Large images arrive resized a bit larger than the input (ImageNet style): crop inside them.
            self.weak_aug = nn.Sequential(*flip, K.RandomCrop((size, size)))
        self.strong_aug = nn.Sequential(
            K.RandomResizedCrop((size, size), scale=(strong_scale_min, 1.0)),
            *([K.RandomHorizontalFlip()] if hflip else []),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=0.5),
        )
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @staticmethod
    def to_unit(images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0)

    @torch.no_grad()
    def weak(self, images: torch.Tensor) -> torch.Tensor:
        return self._normalize(self.weak_aug(self.to_unit(images)))

    @torch.no_grad()
    def strong(self, images: torch.Tensor) -> torch.Tensor:
        return self._normalize(self.strong_aug(self.to_unit(images)))

    @torch.no_grad()
    def test(self, images: torch.Tensor) -> torch.Tensor:
        """Centre crop to the input size (a no-op for small images), then normalize."""
        top = (images.shape[-1] - self.size) // 2
        images = images[..., top:top + self.size, top:top + self.size]
        return self._normalize(self.to_unit(images))
