"""The reference learning-rate schedule (spec section 4), checked against numbers worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from tcl_hf.optim import build_optimizer, lr_at, scaled_lr

PEAK, WARMUP, EPOCHS, MIN_RATIO = 0.12, 20, 200, 0.01
LOW = PEAK * MIN_RATIO  # 0.0012


@pytest.mark.parametrize("quirk", [True, False])
def test_linear_warmup_from_zero_to_peak(quirk):
    assert lr_at(0.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk) == 0.0
    assert lr_at(5.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk) == pytest.approx(0.03)
    assert lr_at(10.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk) == pytest.approx(0.06)
    assert lr_at(19.5, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk) == pytest.approx(0.117)
    assert lr_at(20.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk) == pytest.approx(PEAK)


def test_cosine_with_the_reference_quirk_never_reaches_the_minimum():
    # Progress is (e - 20) / 200: at e = 200 it is 0.9, cos(0.9 pi) = -0.9510565.
    at_end = LOW + 0.5 * (PEAK - LOW) * (1 + math.cos(0.9 * math.pi))
    assert at_end == pytest.approx(0.0041072, abs=1e-6)
    assert lr_at(200.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk=True) == pytest.approx(at_end)
    assert lr_at(200.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk=True) > LOW * 3
    # Half-way by its own measure (e = 120, progress 0.5): the mid-point between peak and floor.
    assert lr_at(120.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk=True) == pytest.approx((PEAK + LOW) / 2)


def test_cosine_without_the_quirk_ends_at_the_minimum():
    assert lr_at(200.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk=False) == pytest.approx(LOW)
    # Progress (e - 20) / 180: at e = 110 it is 0.5.
    assert lr_at(110.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk=False) == pytest.approx((PEAK + LOW) / 2)
    # At e = 65, progress 0.25: cos(pi/4) = sqrt(2)/2.
    expected = LOW + 0.5 * (PEAK - LOW) * (1 + math.sqrt(2) / 2)
    assert lr_at(65.0, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk=False) == pytest.approx(expected)


@pytest.mark.parametrize("quirk", [True, False])
def test_schedule_is_monotone_after_warmup(quirk):
    values = [lr_at(WARMUP + k * 0.5, PEAK, WARMUP, EPOCHS, MIN_RATIO, quirk) for k in range(361)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert min(values) >= LOW - 1e-12


def test_no_warmup_starts_at_peak():
    assert lr_at(0.0, PEAK, 0, EPOCHS, MIN_RATIO, quirk=True) == pytest.approx(PEAK)


def test_linear_scaling_rule():
    assert scaled_lr(0.03, 1024, scale=True) == pytest.approx(0.12)
    assert scaled_lr(0.03, 64, scale=True) == pytest.approx(0.0075)
    assert scaled_lr(0.03, 1024, scale=False) == 0.03


def test_sgd_decays_every_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-3)
    assert isinstance(opt, torch.optim.SGD)
    params = [p for group in opt.param_groups for p in group["params"]]
    assert len(params) == len(list(model.parameters()))
    assert all(group["weight_decay"] == 1e-3 and group["momentum"] == 0.9 for group in opt.param_groups)
