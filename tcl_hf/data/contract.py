"""The input contract of a run: what every image goes through before the network.

One ``InputContract`` decides size, storage size, crop fraction, interpolation, mean and std; the
decoder, the views, the evaluation and the Hub export all read it, so the exported ``config.json``
describes exactly the preprocessing under which the reported accuracy was measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple, Sequence

if TYPE_CHECKING:
    from ..config import DataConfig, ModelConfig

# Images up to this size follow CIFAR (stored at the input size, pad-and-crop views); larger ones
# follow ImageNet (stored with a margin, crops inside it, a centre crop at test time).
SMALL_IMAGE = 64


class Decoding(NamedTuple):
    """How a file becomes a stored uint8 array: shorter side resized to ``resize``, centre crop ``crop``."""
    resize: int
    crop: int
    interpolation: str


@dataclass(frozen=True)
class InputContract:
    size: int                  # the network's (square) input
    storage_size: int          # training images are stored at this square size; views crop inside it
    crop_pct: float            # timm's meaning: evaluation resizes the shorter side to floor(size / crop_pct)
    interpolation: str         # resize filter, by timm's name ("bilinear", "bicubic", ...)
    mean: tuple[float, float, float] | None = None  # None until the data's own statistics are known
    std: tuple[float, float, float] | None = None

    @property
    def train_decoding(self) -> Decoding:
        """Training images keep the storage margin that the random crops of the views move in."""
        return Decoding(self.storage_size, self.storage_size, self.interpolation)

    @property
    def eval_decoding(self) -> Decoding:
        """Held-out images are decoded exactly as timm's evaluation transform would prepare them."""
        return Decoding(self.storage_size, self.size, self.interpolation)

    def with_stats(self, mean: Sequence[float], std: Sequence[float]) -> "InputContract":
        return replace(self, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))

    def timm_data_config(self, in_chans: int = 3) -> dict:
        """The same preprocessing in timm's terms: ``timm.data.create_transform(**this)`` rebuilds the
        evaluation transform (resize the shorter side to storage_size, centre-crop size, normalise)."""
        return {"input_size": (in_chans, self.size, self.size), "interpolation": self.interpolation,
                "mean": self.mean, "std": self.std, "crop_pct": self.crop_pct, "crop_mode": "center"}


def storage_size_for(size: int, crop_pct: float) -> int:
    """timm's evaluation resize for a crop fraction (``transforms_imagenet_eval``): floor(size / crop_pct)."""
    return math.floor(size / crop_pct)


def resolve_input_contract(data_cfg: DataConfig, model_cfg: ModelConfig) -> InputContract:
    """The run's contract from ``data.*`` (explicit keys win), the backbone's timm data config resolved
    by timm for the exact name given (its pretrained tag included) and the image scale rule.

    Mean and std come from ``data.mean/std``, else from the weights when they are pretrained; otherwise
    they stay None for the data loader to measure.
    """
    import timm.data
    from timm.models import get_pretrained_cfg

    pretrained_cfg = get_pretrained_cfg(model_cfg.backbone)
    overrides = {"img_size": data_cfg.image_size, "interpolation": data_cfg.interpolation,
                 "crop_pct": data_cfg.crop_pct}
    resolved = timm.data.resolve_data_config({k: v for k, v in overrides.items() if v is not None},
                                             pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
    size = int(resolved["input_size"][-1])
    # Small images are used whole, as the reference does on CIFAR; a crop fraction means nothing there.
    crop_pct = data_cfg.crop_pct or (1.0 if size <= SMALL_IMAGE else float(resolved["crop_pct"]))
    contract = InputContract(size=size, storage_size=storage_size_for(size, crop_pct), crop_pct=crop_pct,
                             interpolation=resolved["interpolation"])
    if data_cfg.mean is not None:
        return contract.with_stats(data_cfg.mean, data_cfg.std)
    if model_cfg.pretrained or model_cfg.pretrained_file:
        # Pretrained weights expect the statistics they were trained with.
        return contract.with_stats(resolved["mean"], resolved["std"])
    return contract
