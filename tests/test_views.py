"""TCL's batched views (spec section 3) against torchvision, the reference's library.

- Distributions: the parameters our views draw are compared with torchvision's own samplers (a few
  thousand draws each, fixed seeds) by two-sample KS and chi-square tests, and rates with binomial
  tolerances of 4 standard deviations, so that a wrong range, probability, a shared op order or
  per-batch parameters fail.
- Kernels: with fixed parameters, each kernel is compared image by image with torchvision.transforms.v2
  functional (or PIL / torch padding and slicing, which the reference uses).
- Syncs: an aten-op recorder must see no host sync and the same op count at every batch size, and the
  views must run on the meta device (which has no data to read back).
- Determinism: a seed fixes the views.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from op_recorder import OpRecorder
from PIL import Image, ImageOps
from scipy import stats
from torchvision import transforms as T

from tcl_hf.views import (Jitter, Views, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
                          color_jitter, grayscale, pad_crop, random_grayscale, resized_crop, sample_resized_crop,
                          solarize)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CPU = torch.device("cpu")
DRAWS = 4000
# Significance for the two-sample tests; with fixed seeds the outcome is deterministic, and the mutations
# named in the module docstring give p-values far below it.
ALPHA = 1e-3


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_rate(mask: torch.Tensor, p: float) -> None:
    """The fraction of True is within 4 binomial standard deviations of p."""
    n = mask.numel()
    assert abs(mask.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n), (mask.float().mean().item(), p)


def assert_same_distribution(ours, theirs) -> None:
    result = stats.ks_2samp(np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float))
    assert result.pvalue > ALPHA, result


def uint8_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=seeded(seed))


# ---- parameter distributions against torchvision's samplers ----------------------------------------


def torchvision_boxes(height: int, width: int, scale, draws: int) -> np.ndarray:
    """RandomResizedCrop.get_params, as the reference calls it once per image: rows (top, left, h, w)."""
    torch.manual_seed(1)
    image = torch.zeros(3, height, width)
    return np.array([T.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(draws)])


@pytest.mark.parametrize("height, width, scale", [(32, 32, (0.2, 1.0)), (224, 224, (0.2, 1.0)),
                                                  (32, 24, (0.5, 1.0))])
def test_resized_crop_boxes_follow_torchvision(height, width, scale):
    top, left, h, w = (t.numpy() for t in
                       sample_resized_crop(DRAWS, height, width, scale, (3 / 4, 4 / 3), CPU, seeded(0)))
    ref = torchvision_boxes(height, width, scale, DRAWS)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    assert_same_distribution(h * w / (height * width), ref[:, 2] * ref[:, 3] / (height * width))
    assert_same_distribution(w / h, ref[:, 3] / ref[:, 2])
    # Where the box sits: its centre, in both directions.
    assert_same_distribution(top + h / 2, ref[:, 0] + ref[:, 2] / 2)
    assert_same_distribution(left + w / 2, ref[:, 1] + ref[:, 3] / 2)


def test_resized_crop_falls_back_to_torchvision_centre_crop():
    # A 32 x 8 image: no box of 90-100 % of the area with ratio in [3/4, 4/3] fits, so every draw falls back.
    boxes = torch.stack(sample_resized_crop(64, 32, 8, (0.9, 1.0), (3 / 4, 4 / 3), CPU, seeded(0)), dim=1)
    ref = torchvision_boxes(32, 8, (0.9, 1.0), 1)[0]
    assert boxes.tolist() == [list(ref)] * 64


def test_views_use_the_reference_crop_scale():
    params = Views(32, MEAN, STD).sample_strong(DRAWS, CPU, seeded(0))
    ref = torchvision_boxes(32, 32, (0.2, 1.0), DRAWS)
    area = (params.height * params.width).numpy() / 1024
    assert_same_distribution(area, ref[:, 2] * ref[:, 3] / 1024)


def test_strong_view_flip_grayscale_solarize_rates():
    params = Views(32, MEAN, STD).sample_strong(DRAWS, CPU, seeded(0))
    assert_rate(params.flip, 0.5)
    assert_rate(params.grayscale, 0.2)
    assert_rate(params.solarize, 0.5)
    # Drawn independently per sample: no two of them move together.
    for a, b in itertools.combinations((params.flip, params.grayscale, params.solarize), 2):
        assert abs(np.corrcoef(a.numpy(), b.numpy())[0, 1]) < 4 / math.sqrt(DRAWS)


def test_no_flip_when_hflip_is_off():
    views = Views(32, MEAN, STD, hflip=False)
    assert not views.sample_weak(DRAWS, CPU, seeded(0)).flip.any()
    assert not views.sample_strong(DRAWS, CPU, seeded(0)).flip.any()


def torchvision_jitter(draws: int):
    """ColorJitter(0.4, 0.4, 0.4, 0.1).get_params per image: orders [draws, 4] and factors [draws, 4]."""
    torch.manual_seed(2)
    jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    draws = [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
             for _ in range(draws)]
    return np.array([d[0].tolist() for d in draws]), np.array([d[1:] for d in draws])


def test_jitter_is_drawn_per_sample_like_torchvision():
    jitter = Views(32, MEAN, STD).sample_strong(DRAWS, CPU, seeded(0)).jitter
    factors = torch.stack((jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue), dim=1)
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0])
    applied = (factors != identity).any(dim=1)
    # Samples that skip jitter keep every factor at the identity.
    assert_rate(applied, 0.8)
    assert ((factors != identity).all(dim=1) == applied).all()
    ref_orders, ref_factors = torchvision_jitter(DRAWS)
    ours = factors[applied].numpy()
    for column, (lo, hi) in enumerate([(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
        assert lo <= ours[:, column].min() < lo + 0.01 and hi - 0.01 < ours[:, column].max() <= hi
        assert_same_distribution(ours[:, column], ref_factors[:, column])
    # Each of the 24 orders equally likely, ours and torchvision's alike (chi-square against uniform).
    perms = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    for orders in (jitter.order.numpy(), ref_orders):
        counts = np.bincount([perms[tuple(o)] for o in orders], minlength=24)
        assert stats.chisquare(counts).pvalue > ALPHA, counts


def test_weak_offsets_are_uniform_over_the_padded_positions():
    params = Views(32, MEAN, STD).sample_weak(DRAWS, CPU, seeded(0))
    # padding 4 at 32 px: 2 * 4 + 1 window positions per axis, as RandomCrop(32, padding=4).
    for offsets in (params.top, params.left):
        counts = np.bincount(offsets.numpy(), minlength=9)
        assert len(counts) == 9 and stats.chisquare(counts).pvalue > ALPHA, counts
    assert abs(np.corrcoef(params.top.numpy(), params.left.numpy())[0, 1]) < 4 / math.sqrt(DRAWS)
    assert_rate(params.flip, 0.5)


def test_weak_view_of_large_images_crops_inside_without_padding():
    views = Views(224, MEAN, STD, storage_size=256)
    params = views.sample_weak(DRAWS, CPU, seeded(0))
    assert views.padding == 0
    assert params.top.min() == 0 and params.top.max() == 32 and params.left.max() == 32


# ---- kernels with fixed parameters against torchvision -------------------------------------------

BOXES = [  # (top, left, height, width, flip): whole image, upsampled, downsampled, edge boxes, odd shapes.
    (0, 0, 32, 32, False), (0, 0, 32, 32, True), (5, 2, 10, 14, True), (3, 7, 25, 20, False),
    (20, 1, 12, 31, True), (0, 16, 16, 16, False), (31, 31, 1, 1, True), (10, 0, 22, 9, False),
]


@pytest.mark.parametrize("source", [32, 64])
def test_resized_crop_matches_torchvision(source):
    images = torch.rand(len(BOXES), 3, source, source, generator=seeded(0))
    scale = source // 32
    top, left, h, w, flip = (torch.tensor(column) for column in zip(*BOXES))
    top, left, h, w = top * scale, left * scale, h * scale, w * scale
    ours = resized_crop(images, top, left, h, w, 32, flip)
    for i, image in enumerate(images):
        ref = TF.resized_crop(image, int(top[i]), int(left[i]), int(h[i]), int(w[i]), [32, 32], antialias=False)
        ref = TF.horizontal_flip(ref) if flip[i] else ref
        torch.testing.assert_close(ours[i], ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_pad_crop_equals_padding_and_slicing_at_every_offset(dtype):
    offsets = list(itertools.product(range(9), range(9), (False, True)))
    source = uint8_images(1, 32)[0].to(dtype)
    images = source.expand(len(offsets), -1, -1, -1)
    top, left, flip = (torch.tensor(column) for column in zip(*offsets))
    ours = pad_crop(images, top, left, 32, 4, flip)
    for i, (t, l, f) in enumerate(offsets):
        padded = F.pad(source.flip(-1) if f else source, (4, 4, 4, 4))
        assert torch.equal(ours[i], padded[:, t:t + 32, l:l + 32])


def test_pad_crop_without_padding_is_a_window_of_the_image():
    images = uint8_images(2, 40)
    ours = pad_crop(images, torch.tensor([0, 8]), torch.tensor([8, 3]), 32, 0, torch.tensor([False, True]))
    assert torch.equal(ours[0], images[0, :, 0:32, 8:40])
    assert torch.equal(ours[1], images[1].flip(-1)[:, 8:40, 3:35])


def float_images(batch: int = 6, seed: int = 0) -> torch.Tensor:
    """Random pixels, plus the hard cases: gray pixels, ties between the max channels, pure colours."""
    x = torch.rand(batch, 3, 16, 16, generator=seeded(seed))
    x[:, :, 0, :] = x[:, :1, 0, :]
    x[:, 1, 1, :] = x[:, 0, 1, :]
    x[:, :, 2, :3] = torch.eye(3)
    x[:, :, 2, 3:6] = 1 - torch.eye(3)
    return x


FACTORS = torch.tensor([0.6, 1.4, 1.0, 0.8, 1.2, 0.95])


# Our luma uses PIL's 0.299 where torchvision's tensor path uses 0.2989: up to 1e-4 apart.
@pytest.mark.parametrize("ours, theirs, atol", [(adjust_brightness, TF.adjust_brightness, 1e-6),
                                                (adjust_contrast, TF.adjust_contrast, 1e-4),
                                                (adjust_saturation, TF.adjust_saturation, 1e-4)])
def test_blend_ops_match_torchvision(ours, theirs, atol):
    x = float_images()
    out = ours(x, FACTORS)
    for i in range(len(x)):
        torch.testing.assert_close(out[i], theirs(x[i], float(FACTORS[i])), atol=atol, rtol=0)


def test_hue_matches_torchvision():
    x = float_images()
    shifts = torch.tensor([-0.1, 0.1, 0.0, 0.05, -0.5, 0.5])
    out = adjust_hue(x, shifts)
    for i in range(len(x)):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], float(shifts[i])), atol=1e-5, rtol=0)


def test_grayscale_matches_pil():
    images = uint8_images(4, 16)
    ours = grayscale(images.float() / 255) * 255
    for i, image in enumerate(images):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).convert("L")
        # PIL rounds to integers.
        torch.testing.assert_close(ours[i, 0], torch.from_numpy(np.array(pil)).float(), atol=0.5 + 1e-3, rtol=0)


def test_random_grayscale_replaces_only_masked_samples():
    x = float_images(4)
    mask = torch.tensor([True, False, True, False])
    out = random_grayscale(x, mask)
    assert torch.equal(out[~mask], x[~mask])
    assert torch.equal(out[mask], grayscale(x[mask]).expand(-1, 3, -1, -1))


def test_solarize_matches_pil_on_masked_samples():
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, -1, -1)
    out = solarize(images.float() / 255, torch.tensor([True, False]))
    pil = ImageOps.solarize(Image.fromarray(images[0].permute(1, 2, 0).numpy()), 128)
    expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=0)
    assert torch.equal(out[1], images[1].float() / 255)


def jitter_reference(image: torch.Tensor, factors, order) -> torch.Tensor:
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for op in order:
        image = ops[op](image, factors[op])
    return image


def test_color_jitter_applies_each_samples_own_order():
    # One image per order, all 24 of them.
    orders = list(itertools.permutations(range(4)))
    x = float_images(len(orders))
    factors = (0.6 + 0.8 * torch.rand(len(orders), 4, generator=seeded(1))) * torch.tensor([1, 1, 1, 0.125])
    factors[:, 3] -= 0.1
    jitter = Jitter(*factors.unbind(dim=1), torch.tensor(orders))
    out = color_jitter(x, jitter)
    for i in range(len(x)):
        ref = jitter_reference(x[i], factors[i].tolist(), orders[i])
        torch.testing.assert_close(out[i], ref, atol=2e-4, rtol=0)
    # The comparison has teeth: under the reversed orders most images change (not all, as brightness,
    # contrast and saturation commute but for clamping).
    other = color_jitter(x, jitter._replace(order=jitter.order.flip(1)))
    assert ((other - out).flatten(1).abs().amax(dim=1) > 0.01).float().mean() > 0.5


def test_color_jitter_leaves_samples_without_jitter_unchanged():
    x = float_images(3)
    identity = Jitter(torch.ones(3), torch.ones(3), torch.ones(3), torch.zeros(3),
                      torch.tensor([(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)]))
    torch.testing.assert_close(color_jitter(x, identity), x, atol=1e-6, rtol=0)


def test_strong_view_composes_like_the_reference_pipeline():
    """Crop, flip, jitter in each sample's order, grayscale, solarize, normalize — image by image."""
    views = Views(32, MEAN, STD)
    images = uint8_images(16, 32)
    params = views.sample_strong(16, CPU, seeded(3))
    assert params.grayscale.any() and params.solarize.any() and params.flip.any()
    ours = views.apply_strong(images, params)
    jitter = params.jitter
    for i, image in enumerate(images.float() / 255):
        x = TF.resized_crop(image, int(params.top[i]), int(params.left[i]), int(params.height[i]),
                            int(params.width[i]), [32, 32], antialias=False)
        x = TF.horizontal_flip(x) if params.flip[i] else x
        factors = [float(f[i]) for f in (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)]
        x = jitter_reference(x, factors, jitter.order[i].tolist())
        x = TF.rgb_to_grayscale(x, num_output_channels=3) if params.grayscale[i] else x
        x = TF.solarize(x, 128 / 255) if params.solarize[i] else x
        ref = TF.normalize(x, list(MEAN), list(STD))
        # 2e-4 before normalizing (luma weights); a pixel at the solarize threshold may flip by as much.
        close = (ours[i] - ref).abs() < 2e-4 / min(STD)
        assert close.float().mean() > 0.999, i


def test_weak_view_is_flip_then_padded_crop_then_normalize():
    views = Views(32, MEAN, STD)
    images = uint8_images(8, 32)
    params = views.sample_weak(8, CPU, seeded(4))
    ours = views.apply_weak(images, params)
    for i, image in enumerate(images.float() / 255):
        x = F.pad(TF.horizontal_flip(image) if params.flip[i] else image, (4, 4, 4, 4))
        x = x[:, params.top[i]:params.top[i] + 32, params.left[i]:params.left[i] + 32]
        torch.testing.assert_close(ours[i], TF.normalize(x, list(MEAN), list(STD)), atol=1e-6, rtol=0)


# ---- no host syncs, and a flat op count -----------------------------------------------------------


def test_op_recorder_flags_host_syncs():
    x = torch.rand(8)
    for sync in (lambda: x.sum().item(), lambda: x[x > 0.5], lambda: (x > 0.5).nonzero(),
                 lambda: bool((x > 0.5).any()), lambda: torch.tensor([1.0, 2.0])):
        with OpRecorder() as ops:
            sync()
        assert ops.flagged, sync


@pytest.mark.parametrize("storage, size", [(32, 32), (40, 32)])
@pytest.mark.parametrize("view", ["weak", "strong"])
def test_views_dispatch_no_sync_and_as_many_ops_at_any_batch(storage, size, view):
    views = Views(size, MEAN, STD, storage_size=storage)
    totals = []
    for batch in (8, 64):
        images = uint8_images(batch, storage)
        with OpRecorder() as ops:
            getattr(views, view)(images)
        assert not ops.flagged, ops.flagged
        totals.append(ops.total)
    print(f"{view} view, {storage} px stored: {totals[0]} aten ops per call at batch 8 and 64")
    assert totals[0] == totals[1]
    assert totals[0] < (60 if view == "weak" else 350)


def test_views_run_on_the_meta_device():
    # Meta tensors hold no data: any read back to the host, or a CPU tensor built per call, fails here.
    views = Views(32, MEAN, STD).to("meta")
    images = torch.empty(4, 3, 32, 32, dtype=torch.uint8, device="meta")
    assert views.weak(images).shape == views.strong(images).shape == (4, 3, 32, 32)


# ---- determinism -----------------------------------------------------------------------------------


def test_same_seed_same_views_and_other_seed_other_views():
    views = Views(32, MEAN, STD)
    images = uint8_images(8, 32)
    for view in (views.weak, views.strong):
        assert torch.equal(view(images, seeded(5)), view(images, seeded(5)))
        assert not torch.equal(view(images, seeded(5)), view(images, seeded(6)))


def test_global_rng_seed_reproduces_views():
    # Without a generator the views use the global RNG, whose state accelerate checkpoints.
    views = Views(32, MEAN, STD)
    images = uint8_images(8, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append((views.weak(images), views.strong(images)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(views.strong(images), outs[0][1])
