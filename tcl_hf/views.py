"""TCL's image views (spec section 3), made on whole batches on the training device.

Every random parameter is drawn per sample, on the images' device, from the torch RNG (the global one
unless a generator is passed), and applied with batched kernels: no host synchronisation and an op
count that does not grow with the batch. Why our own kernels rather than kornia 0.9's modules (aten ops
per call at batch 8 / 256 and host syncs, counted on CPU with tests/op_recorder.py):
- RandomCrop(padding): 201 / 945 ops ("slice" loops over samples), 264 in "resample" mode, and a
  data-dependent `unique` either way: here one exact integer gather.
- RandomResizedCrop "slice" loops too (196 / 1,917 ops); "resample" is sync-free and flat (411 ops) but its
  warp grid is not torchvision's resize grid (up to 0.27 apart on [0, 1] pixels): here one grid_sample.
- ColorJitter / ColorJiggle: 176 / 169 ops with 4 host syncs each and one op order for the whole batch:
  here per-sample factors and orders in seven batched steps, factor 1 where a sample has no op.
- RandomGrayscale (25 ops) and RandomSolarize (35 ops) are sync-free, but a masked `where` is 5-8 ops.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# ITU-R 601-2 luma, what PIL's convert("L") uses in the reference (torchvision's tensor path uses 0.2989).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# torchvision's RandomResizedCrop tries this many boxes before falling back to a centre crop.
CROP_ATTEMPTS = 10
# RandomResizedCrop's default aspect-ratio range.
CROP_RATIO = (3 / 4, 4 / 3)
# color_jitter's hue rotation comes after three blend slots (brightness, contrast or saturation).
HUE_STEP = 3
# RandomSolarize(128) on uint8 PIL images: pixels >= 128 are inverted.
SOLARIZE_THRESHOLD = 128 / 255


class Jitter(NamedTuple):
    """Per-sample ColorJitter parameters: factors [B] and order [B, 4] (order[b, k] = op applied k-th:
    0 brightness, 1 contrast, 2 saturation, 3 hue). Samples that did not draw jitter hold identity factors."""
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: torch.Tensor


# ---- random parameters -----------------------------------------------------------------------------


def sample_mask(batch: int, p: float, device: torch.device, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """Bool [B]: True with probability p, independently per sample (flip, grayscale, solarize)."""
    return torch.rand(batch, device=device, generator=generator) < p


def sample_crop_offsets(batch: int, max_offset: int, device: torch.device,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(top, left) int64 [B], each uniform over 0..max_offset, as RandomCrop's get_params."""
    offsets = torch.randint(0, max_offset + 1, (2, batch), device=device, generator=generator)
    return offsets[0], offsets[1]


def sample_resized_crop(batch: int, height: int, width: int, scale: tuple[float, float],
                        ratio: tuple[float, float], device: torch.device,
                        generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, h, w) int64 [B] with torchvision's RandomResizedCrop.get_params distribution.

    All attempts are drawn at once and the first one that fits is taken; samples where none fits
    get torchvision's centre-crop fallback, whose size depends only on the image shape.
    """
    u = torch.rand(batch, 2 * CROP_ATTEMPTS + 2, device=device, generator=generator)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :CROP_ATTEMPTS])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, CROP_ATTEMPTS:2 * CROP_ATTEMPTS])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # argmax returns the first maximal index, i.e. the first attempt that fits.
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    fallback_h, fallback_w = _centre_crop_fallback(height, width, ratio)
    h = torch.where(found, h.gather(1, first)[:, 0], fallback_h)
    w = torch.where(found, w.gather(1, first)[:, 0], fallback_w)
    # randint(0, n) as floor(u * n); the min guards against u * n rounding up to n in float32.
    top = torch.minimum(torch.floor(u[:, -2] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(u[:, -1] * (width - w + 1)), width - w)
    # The fallback is centred, not random.
    top = torch.where(found, top, (height - fallback_h) // 2)
    left = torch.where(found, left, (width - fallback_w) // 2)
    return top.long(), left.long(), h.long(), w.long()


def _centre_crop_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's box when no attempt fits: the whole image, its aspect ratio clamped to `ratio`."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def sample_jitter(batch: int, brightness: float, contrast: float, saturation: float, hue: float, p: float,
                  device: torch.device, generator: torch.Generator | None = None) -> Jitter:
    """ColorJitter(brightness, contrast, saturation, hue) applied with probability p, per sample.

    Factors are uniform in [max(0, 1 - s), 1 + s] (hue: [-hue, hue]) as ColorJitter.get_params, and each
    sample gets its own uniformly random order of the four ops, as torchvision draws one per image.
    """
    u = torch.rand(batch, 9, device=device, generator=generator)
    applied = u[:, 0] < p
    ranges = [(max(0.0, 1 - s), 1 + s, 1.0) for s in (brightness, contrast, saturation)] + [(-hue, hue, 0.0)]
    factors = [_uniform_or_identity(u[:, 1 + i], applied, *r) for i, r in enumerate(ranges)]
    return Jitter(*factors, order=torch.argsort(u[:, 5:], dim=1))


def _uniform_or_identity(u: torch.Tensor, applied: torch.Tensor, lo: float, hi: float, identity: float
                         ) -> torch.Tensor:
    """lo + (hi - lo) u where applied, else the op's identity factor."""
    return identity + applied * (lo - identity + (hi - lo) * u)


# ---- kernels with explicit parameters ------------------------------------------------------------


def pad_crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int, padding: int,
             flip: torch.Tensor) -> torch.Tensor:
    """Horizontal flip where `flip`, then the size x size window at (top, left) of the image zero-padded
    by `padding`: RandomHorizontalFlip then RandomCrop(size, padding), as one integer gather (exact, any dtype).
    """
    batch, channels, height, width = images.shape
    steps = torch.arange(size, device=images.device)
    rows = top[:, None] - padding + steps
    cols = left[:, None] - padding + steps
    # Flipping first mirrors which column each output pixel reads.
    cols = torch.where(flip[:, None], width - 1 - cols, cols)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    index = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]
    pixels = images.flatten(2).gather(2, index.view(batch, 1, -1).expand(-1, channels, -1))
    return pixels.view(batch, channels, size, size) * inside[:, None]


def resized_crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
                 width: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """torchvision's resized_crop(top, left, height, width, [size, size], bilinear, antialias=False), then a
    horizontal flip where `flip`, as one grid_sample over float images [B, C, H, W]."""
    ys = _source_coords(top, height, size, images.shape[-2], None)
    xs = _source_coords(left, width, size, images.shape[-1], flip)
    grid = torch.stack((xs[:, None, :].expand(-1, size, -1), ys[:, :, None].expand(-1, -1, size)), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _source_coords(start: torch.Tensor, length: torch.Tensor, size: int, extent: int,
                   flip: torch.Tensor | None) -> torch.Tensor:
    """grid_sample coordinates [B, size] of the pixels F.interpolate(align_corners=False) reads when it
    resizes [start, start + length) to `size` pixels; a flip is the sign of the step."""
    start, length = start.float()[:, None], length.float()[:, None]
    step = length / size if flip is None else torch.where(flip[:, None], -length, length) / size
    centred = torch.arange(size, device=start.device, dtype=torch.float32) + (0.5 - size / 2)
    coords = start + (length / 2 - 0.5) + step * centred
    # interpolate clamps to the crop's edge pixels, so an upsampled crop never reads its neighbours.
    coords = torch.minimum(torch.maximum(coords, start), start + length - 1)
    return (2 * coords + 1) / extent - 1


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma [B, 1, H, W] of RGB images in [0, 1]."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])


def blend_gray(x: torch.Tensor, factor: torch.Tensor, toward_pixel: torch.Tensor | float,
               toward_mean: torch.Tensor | float) -> torch.Tensor:
    """clamp(f x + (1 - f) t, 0, 1) per sample, t = toward_pixel * gray(x) + toward_mean * mean(gray(x)):
    brightness is (0, 0), saturation (1, 0), contrast (0, 1), as torchvision's _blend."""
    gray = grayscale(x)
    target = gray * toward_pixel + gray.mean(dim=(1, 2, 3), keepdim=True) * toward_mean
    factor = _per_sample(factor)
    # f*x + (1-f)*t rather than lerp: factor 1 then returns x bit for bit.
    return (factor * x + (1 - factor) * target).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend_gray(x, factor, 0.0, 0.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend_gray(x, factor, 0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return blend_gray(x, factor, 1.0, 0.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB images in [0, 1] by `shift` turns per sample (torchvision's adjust_hue).

    Keeps each pixel's max and min channel (HSV value and saturation) and rebuilds RGB from the shifted
    hue with the closed form c_k = max - chroma * clamp(min(k, 4 - k), 0, 1), k = (n_k + 6 hue) mod 6.
    """
    top, argtop = x.max(dim=1, keepdim=True)
    chroma = top - x.amin(dim=1, keepdim=True)
    # Hue in sixths: 2 * (index of the max channel) + (next channel - previous channel) / chroma.
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    spread = torch.where(argtop == 0, g - b, torch.where(argtop == 1, b - r, r - g))
    sixths = (spread / chroma.clamp_min(1e-12)).add_(argtop, alpha=2).add_(_per_sample(shift), alpha=6)
    # n_k = 5, 3, 1 for R, G, B.
    k = torch.arange(5, 0, -2, device=x.device, dtype=x.dtype).view(1, 3, 1, 1).add(sixths).remainder_(6)
    return top - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)


def color_jitter(x: torch.Tensor, jitter: Jitter) -> torch.Tensor:
    """Each sample's four ops in its own order, with a single hue rotation for the whole batch.

    Seven steps: three blend slots, the hue rotation, three blend slots. A sample's blend ops
    (brightness, contrast, saturation) that come before its hue fill the slots before the rotation in
    order, the others the slots after; its unused slots get factor 1, which leaves images unchanged.
    """
    # Position of each op in each sample's order (the inverse permutation), then its step.
    position = torch.argsort(jitter.order, dim=1)
    hue_position = position[:, 3:]
    step = position + (position >= hue_position) * (HUE_STEP - hue_position)
    # in_step[k, b, i]: blend op i of sample b runs at step k.
    in_step = (step[None, :, :3] == torch.arange(2 * HUE_STEP + 1, device=x.device)[:, None, None]).float()
    factors = torch.stack((jitter.brightness, jitter.contrast, jitter.saturation), dim=1)
    blend_factor = (in_step * factors).sum(dim=2) + 1 - in_step.sum(dim=2)
    toward_pixel, toward_mean = in_step[:, :, 2, None, None, None], in_step[:, :, 1, None, None, None]
    for k in range(in_step.shape[0]):
        if k == HUE_STEP:
            x = adjust_hue(x, jitter.hue)
        else:
            x = blend_gray(x, blend_factor[k], toward_pixel[k], toward_mean[k])
    return x


def random_grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Luma in all three channels where `mask`."""
    return torch.where(_per_sample(mask), grayscale(x), x)


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float = SOLARIZE_THRESHOLD) -> torch.Tensor:
    """Pixels >= threshold inverted (x -> 1 - x) where `mask`."""
    return torch.where(_per_sample(mask) & (x >= threshold), 1 - x, x)


# ---- the views -----------------------------------------------------------------------------------


class WeakParams(NamedTuple):
    """Per-sample weak-view parameters: window offsets in the padded image, int64 [B]; flips, bool [B]."""
    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor


class StrongParams(NamedTuple):
    """Per-sample strong-view parameters: crop box, int64 [B]; flip, grayscale and solarize, bool [B]."""
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor
    jitter: Jitter
    grayscale: torch.Tensor
    solarize: torch.Tensor


class Views(nn.Module):
    """Weak view (flip + crop), strong view (spec section 3) and the test view (centre crop).

    Images arrive as uint8 [B, 3, S, S] with S = storage_size, already on the training device. Small images
    (storage_size == size, CIFAR) get the reference's pad-and-crop (padding size/8 unless given); larger
    stored images get a random size x size crop inside them. The strong view follows the reference's PIL
    pipeline: RandomResizedCrop(scale=(strong_scale_min, 1)), flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with
    p=0.8, RandomGrayscale(0.2), RandomSolarize(128, 0.5). `weak` and `strong` draw their parameters from
    the torch RNG of the images' device (checkpointed by accelerate), or from `generator`.
    """

    def __init__(self, size: int, mean, std, padding: int | None = None, strong_scale_min: float = 0.2,
                 hflip: bool = True, storage_size: int | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.size = size
        # channels_last on a GPU: the network's convolutions then run without a layout change.
        self.memory_format = memory_format
        self.storage_size = storage_size or size
        if self.storage_size == size:
            self.padding = max(1, size // 8) if padding is None else padding
        else:
            self.padding = 0
        self.flip_p = 0.5 if hflip else 0.0
        self.scale = (strong_scale_min, 1.0)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    @staticmethod
    def to_unit(images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0)

    def sample_weak(self, batch: int, device: torch.device, generator: torch.Generator | None = None
                    ) -> WeakParams:
        max_offset = self.storage_size + 2 * self.padding - self.size
        top, left = sample_crop_offsets(batch, max_offset, device, generator)
        return WeakParams(top, left, sample_mask(batch, self.flip_p, device, generator))

    def sample_strong(self, batch: int, device: torch.device, generator: torch.Generator | None = None
                      ) -> StrongParams:
        box = sample_resized_crop(batch, self.storage_size, self.storage_size, self.scale, CROP_RATIO, device,
                                  generator)
        return StrongParams(*box, sample_mask(batch, self.flip_p, device, generator),
                            sample_jitter(batch, 0.4, 0.4, 0.4, 0.1, 0.8, device, generator),
                            sample_mask(batch, 0.2, device, generator), sample_mask(batch, 0.5, device, generator))

    @torch.no_grad()
    def apply_weak(self, images: torch.Tensor, params: WeakParams) -> torch.Tensor:
        # Cropping the uint8 images first converts only the pixels kept.
        crops = pad_crop(images, params.top, params.left, self.size, self.padding, params.flip)
        return self._normalize(self.to_unit(crops))

    @torch.no_grad()
    def apply_strong(self, images: torch.Tensor, params: StrongParams) -> torch.Tensor:
        x = resized_crop(self.to_unit(images), params.top, params.left, params.height, params.width, self.size,
                         params.flip)
        x = color_jitter(x, params.jitter)
        x = random_grayscale(x, params.grayscale)
        return self._normalize(solarize(x, params.solarize))

    def weak(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply_weak(images, self.sample_weak(images.shape[0], images.device, generator))

    def strong(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply_strong(images, self.sample_strong(images.shape[0], images.device, generator))

    def three(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """TCL's three views of a batch: (weak, strong, strong)."""
        return self.weak(images), self.strong(images), self.strong(images)

    @torch.no_grad()
    def test(self, images: torch.Tensor) -> torch.Tensor:
        """Centre crop to the input size (a no-op for small images), then normalize."""
        top = (images.shape[-1] - self.size) // 2
        images = images[..., top:top + self.size, top:top + self.size]
        return self._normalize(self.to_unit(images))
