"""Numbers as the run's files and cards write them: no float32 conversion noise, no -0.0, and no precision a
metric means lost (checked against values written here, not by the rounding under test)."""
from __future__ import annotations

import json
import math

import numpy as np
from fixtures import significant_digits
from huggingface_hub import ModelCard

from tcl_hf.card import model_card
from tcl_hf.floats import tidy
from tcl_hf.rundir import append_metrics, read_metrics


def test_float32_values_read_as_written_and_minus_zero_as_zero():
    for written in (0.05, 0.1, 0.9376, 1e-4, 123.45, 3.0e-7):
        converted = float(np.float32(written))   # what .item() of a float32 tensor gives
        assert converted != written               # the noise this is about
        assert tidy(converted) == written
    assert math.copysign(1.0, tidy(-0.0)) == 1.0 and tidy(-0.0) == 0.0
    assert tidy({"a": [float(np.float32(0.05)), -0.0], "b": (1, None, "x", True)}) == {"a": [0.05, 0.0],
                                                                                       "b": (1, None, "x", True)}
    assert math.isnan(tidy(float("nan"))) and tidy(float("inf")) == float("inf")


def test_metrics_keep_their_meaningful_digits():
    auc, wall = 0.98765432109, 4321.987654321
    assert abs(tidy(auc) - auc) < 1e-7          # far more than the 4 significant digits an AUC needs
    assert abs(tidy(wall) - wall) < 5e-4        # wall time to the millisecond
    assert tidy(1234567) == 1234567 and tidy(True) is True   # counts and flags are not floats


def test_metrics_jsonl_is_written_tidy(tmp_path):
    append_metrics(tmp_path, {"epoch": 1, "test_acc": float(np.float32(0.05)), "loss_con": -0.0})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"epoch": 1, "test_acc": 0.05, "loss_con": 0.0} and "-0.0" not in line
    assert read_metrics(tmp_path)[0]["test_acc"] == 0.05


def test_model_card_header_values_are_tidy():
    noisy = {"test_acc": float(np.float32(0.8125 + 1e-3)), "noise_auc": float(np.float32(0.9)), "knn_acc": -0.0}
    config = {"data": {"format": "digits"}, "model": {"backbone": "resnet18"}, "method": "tcl"}
    header = ModelCard(str(model_card(config, noisy, load_ref="local-dir:x"))).data.eval_results
    values = {r.metric_name: r.metric_value for r in header}
    assert values["Test accuracy"] == 0.8135 and values["Noise detection AUC"] == 0.9
    assert all(significant_digits(v) <= 7 for v in values.values())
    assert math.copysign(1.0, values["kNN test accuracy (projections)"]) == 1.0
