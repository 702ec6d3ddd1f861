"""The methods' traits (tcl_hf/methods.py), which the run reads from ``method_class(cfg.method)``, against what each
method's step and the run's settings actually need."""
from __future__ import annotations

import typing

import pytest
import torch

from tcl_hf.config import Config, load_config
from tcl_hf.errors import ConfigError
from tcl_hf.methods import METHODS, StepInputs, TCLPlus, create_method, method_class
from tcl_hf.models import TCLModel
from tcl_hf.views import Views

NAMES = typing.get_args(typing.get_type_hints(Config)["method"])
CLASSES = 3


def test_every_configurable_method_has_a_class():
    assert set(NAMES) == set(METHODS) and all(method_class(name).name == name for name in NAMES)


def config_of(name: str, *overrides: str) -> Config:
    start = ["init.from=."] if name == "tcl_plus" else []  # any folder: nothing is read from it here
    return load_config(None, [f"method={name}", *start, *overrides])


def one_step_method(name: str, model: TCLModel):
    return create_method(config_of(name), None, model, torch.zeros(8, dtype=torch.long))


def step(method, model: TCLModel, confidences: torch.Tensor, scale: float) -> torch.Tensor:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    prototypes = torch.nn.functional.normalize(torch.randn(CLASSES, 8), dim=1)
    batch = StepInputs(images, labels, confidences, prototypes, scale, scale, warmup=False)
    views = Views(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return method.step_terms(model, views, batch)["loss"]


@pytest.mark.parametrize("name", NAMES)
def test_ddp_is_told_of_unused_parameters_exactly_when_a_step_leaves_some(name):
    torch.manual_seed(0)
    model = TCLModel("preact_resnet_mini", num_classes=CLASSES, proj_dim=8)
    step(one_step_method(name, model), model, torch.full((8,), 0.9), 1.0).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    # accelerate's find_unused_parameters: False would hang DDP on the unused ones, True costs a graph walk.
    assert method_class(name).unused_parameters == bool(unused), unused


@pytest.mark.parametrize("name", NAMES)
def test_judged_exactly_when_the_targets_follow_the_clean_ratio_estimate(name):
    torch.manual_seed(0)
    model = TCLModel("preact_resnet_mini", num_classes=CLASSES, proj_dim=8).eval()
    method = one_step_method(name, model)
    trusting = step(method, model, torch.full((8,), 0.9), 1.0)
    doubting = step(method, model, torch.tensor([0.9, 0.1] * 4), 0.3)
    assert method_class(name).judged == (not torch.allclose(trusting, doubting))


@pytest.mark.parametrize("name", NAMES)
def test_starts_from_a_run_exactly_when_the_config_asks_for_init_from(name, tmp_path):
    starts = method_class(name).starts_from_run
    with pytest.raises(ConfigError, match="init.from") if starts else _no_error():
        load_config(None, [f"method={name}"])
    with pytest.raises(ConfigError, match="init.from") if not starts else _no_error():
        load_config(None, [f"method={name}", f"init.from={tmp_path}"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("constant", [False, True])
def test_only_tcl_plus_with_plus_constant_lr_keeps_its_peak_lr(name, constant):
    model = TCLModel("preact_resnet_mini", num_classes=CLASSES, proj_dim=8)
    cfg = config_of(name, f"plus.constant_lr={str(constant).lower()}")
    method = create_method(cfg, None, model, torch.zeros(8, dtype=torch.long))
    keeps = method_class(name) is TCLPlus and constant
    assert method.lr(0.01, 0.4) == (0.4 if keeps else 0.01)


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
