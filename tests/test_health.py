"""Health signals and the collapse verdict on hand-made tensors with hand-computed expectations, the monitor's
decisions beside the run's schedule (which ends an automatic warm-up: tests/test_schedule.py), then
``train.on_collapse=stop`` through a run."""
from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from fixtures import tiny_digits

from tcl_hf import health
from tcl_hf.health import (CollapseStop, HealthMonitor, agreement_above_chance, class_entropy, collapse_reasons,
                           knn_gap, prediction_entropy_ratio)
from tcl_hf.config import load_config
from tcl_hf.errors import ConfigError
from tcl_hf.methods import create_method, method_class
from tcl_hf.schedule import Schedule
from tcl_hf.state import RunState
from tcl_hf.verdict import run_verdict, summary_verdict, untrusted_outputs_line

T = torch.tensor


# ---- signals ---------------------------------------------------------------------------------------------
def test_class_entropy_by_hand():
    assert class_entropy(T([0, 0, 1, 1]), 3) == pytest.approx(math.log(2))
    assert class_entropy(T([2, 2, 2]), 3) == 0.0
    # 1/2, 1/4, 1/4: -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 1.5 ln 2
    assert class_entropy(T([0, 0, 1, 2]), 4) == pytest.approx(1.5 * math.log(2))


def test_prediction_entropy_ratio_by_hand():
    given = T([0, 0, 1, 1, 2, 2, 3, 3])                        # uniform over 4: ln 4
    assert prediction_entropy_ratio(given, given, 4) == pytest.approx(1.0)
    assert prediction_entropy_ratio(T([0, 0, 0, 0, 1, 1, 1, 1]), given, 4) == pytest.approx(0.5)  # ln 2 / ln 4
    assert prediction_entropy_ratio(torch.zeros(8, dtype=torch.long), given, 4) == 0.0
    assert prediction_entropy_ratio(T([0, 1]), T([1, 1]), 2) == 1.0  # one label only: nothing to collapse onto


def test_agreement_and_its_z_score_by_hand():
    given = T([0, 1] * 50)
    agreement, z = agreement_above_chance(given.clone(), given, 2)
    # chance = 0.5 * 0.5 + 0.5 * 0.5 = 0.5; z = (1 - 0.5) / sqrt(0.25 / 100) = 10
    assert (agreement, z) == (1.0, pytest.approx(10.0))
    agreement, z = agreement_above_chance(torch.zeros(100, dtype=torch.long), given, 2)
    assert (agreement, z) == (0.5, pytest.approx(0.0))  # one class predicted: agrees exactly as often as chance
    pred = T([0, 1] * 40 + [1, 0] * 10)                        # 80 of 100 agree, both classes still balanced
    assert agreement_above_chance(pred, given, 2) == (0.8, pytest.approx(0.3 / 0.05))


def test_knn_gap_by_hand():
    assert knn_gap(0.3, 0.5, 10) == pytest.approx(0.5)         # lacks 0.2 of kNN's 0.4 over chance
    assert knn_gap(0.6, 0.5, 10) == 0.0                        # ahead of kNN: clipped
    assert knn_gap(0.1, 0.11, 10) is None                      # kNN within 0.02 of chance says nothing
    assert knn_gap(None, 0.5, 10) is None and knn_gap(0.5, None, 10) is None


# ---- verdict -------------------------------------------------------------------------------------------
def _signals(ratio):
    return {"pred_entropy_ratio": ratio, "label_agreement": 0.5, "label_agreement_z": 9.0, "knn_gap": 0.9}


def test_collapse_reasons_by_hand():
    assert collapse_reasons(_signals(0.8), 0.6, 0.62) == []
    [reason] = collapse_reasons(_signals(0.4), 0.6, 0.62)
    assert "entropy 0.40" in reason
    [reason] = collapse_reasons(_signals(0.8), 0.2, 0.6)
    assert "fell from 0.60 to 0.20" in reason
    assert collapse_reasons(_signals(0.8), 0.31, 0.6) == []    # 0.31 keeps more than half of 0.6
    assert collapse_reasons(_signals(0.8), 0.01, None) == []   # no switch estimate: nothing to fall from
    assert len(collapse_reasons(_signals(0.3), 0.1, 0.6)) == 2


def test_warmup_epochs_auto_from_yaml_and_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  warmup_epochs: auto\n  max_warmup_epochs: 7\ntrain:\n  on_collapse: stop\n")
    cfg = load_config(recipe)
    assert (cfg.optim.warmup_epochs, cfg.optim.max_warmup_epochs, cfg.train.on_collapse) == ("auto", 7, "stop")
    assert load_config(None, ["optim.warmup_epochs=auto"]).optim.warmup_epochs == "auto"
    assert load_config(None, ["optim.warmup_epochs=3"]).optim.warmup_epochs == 3
    assert load_config(None, []).train.on_collapse == "fallback"


@pytest.mark.parametrize("override, allowed", [("optim.warmup_epochs=soon", "int | auto"),
                                               ("optim.warmup_epochs=-2", ">= 0"),
                                               ("optim.max_warmup_epochs=0", "> 0"),
                                               ("train.on_collapse=abort", "warn | stop | fallback")])
def test_bad_values_name_key_and_what_is_allowed(override, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert message.startswith(override.split("=")[0]) and allowed in message and "\n" not in message


# ---- the monitor's decisions -------------------------------------------------------------------------------
class Monitored:
    """The monitor beside the run's schedule, called after an epoch's EM step as the trainer calls them."""

    def __init__(self, cfg, state, say):
        method = create_method(cfg, None)
        self.schedule = Schedule(cfg, method, state, total_batch=256, steps_per_epoch=10, say=say)
        monitor = HealthMonitor(cfg, method, self.schedule, state, 4, say)
        self.monitor, self.summary, self.respond, self.after_resume = (monitor, monitor.summary, monitor.respond,
                                                                       monitor.after_resume)

    def after_epoch(self, epoch, record, pred, given):
        line = self.monitor.after_epoch(epoch, record, pred, given)
        self.schedule.after_epoch(epoch, record)
        return line

    def lr_switch(self):
        return self.schedule.lr_switch()


def _monitor(*overrides):
    # An automatic warm-up is bounded at 10; a collapse warns (the default falls back: tests/test_fallback.py).
    cfg = load_config(None, ["train.epochs=20", "train.on_collapse=warn", *overrides])
    state, said = RunState(8, 4, 2), []
    return Monitored(cfg, state, said.append), state, said


GIVEN = T([0, 0, 1, 1, 2, 2, 3, 3])
SPREAD = GIVEN.clone()  # every prediction right: entropy ratio 1


def test_auto_warmup_switches_once_settled_and_judges_only_tcl_epochs():
    monitor, st, said = _monitor("optim.warmup_epochs=auto")
    for epoch, estimate in ((1, 0.2), (2, 0.60), (3, 0.62)):
        assert monitor.after_epoch(epoch, {"clean_ratio_est": estimate}, torch.zeros(8, dtype=torch.long),
                                   GIVEN) is None  # a collapsed-looking warm-up is never judged
    assert st.tcl_from_epoch is None and monitor.lr_switch() is None  # epochs 1-3 agree only by chance (z = 0)
    for epoch, estimate in ((4, 0.61), (5, 0.63), (6, 0.64)):
        assert monitor.after_epoch(epoch, {"clean_ratio_est": estimate}, SPREAD, GIVEN) is None
    # z of 8 of 8 agreeing at chance 1/4: 0.75 / sqrt(3/16 / 8) = 4.9 >= 3 from epoch 4: settled after epoch 6
    assert st.tcl_from_epoch == 7 and st.switch_clean_ratio == 0.64 and monitor.lr_switch() == 6
    assert len(st.warmup_history) == 6 and said and "TCL from epoch 7" in said[-1]
    record = {"clean_ratio_est": 0.6}
    assert monitor.after_epoch(7, record, SPREAD, GIVEN) is None and record["collapsed"] is False
    record = {"clean_ratio_est": 0.3}
    line = monitor.after_epoch(8, record, SPREAD, GIVEN)
    assert record["collapsed"] is True and st.collapsed_epoch == 8
    assert line.startswith("TCL collapsed at epoch 8") and "fell from 0.64 to 0.30" in line
    assert "the warm-up had settled" in line and "\n" not in line
    record = {"clean_ratio_est": 0.3}
    assert monitor.after_epoch(9, record, SPREAD, GIVEN) is None and record["collapsed"] is True  # said once
    assert monitor.summary() == {"tcl_from_epoch": 7, "collapsed_epoch": 8, "fallback_from_epoch": None,
                                 "verdict": "collapsed at epoch 8"}


def test_auto_warmup_stops_at_its_bound():
    monitor, st, _ = _monitor("optim.warmup_epochs=auto", "optim.max_warmup_epochs=2")
    for epoch in (1, 2):
        monitor.after_epoch(epoch, {"clean_ratio_est": 0.1 * epoch}, torch.zeros(8, dtype=torch.long), GIVEN)
    # Forced by the bound, not settled: no baseline for the clean-ratio rule.
    assert st.tcl_from_epoch == 3 and st.switch_clean_ratio is None
    line = monitor.after_epoch(3, {"clean_ratio_est": 0.0}, T([0] * 8), GIVEN)
    assert line.startswith("TCL collapsed at epoch 3") and "reached optim.max_warmup_epochs" in line


def test_fixed_warmup_is_judged_from_its_first_tcl_epoch():
    monitor, st, _ = _monitor("optim.warmup_epochs=3")
    record = {"clean_ratio_est": 0.5}
    monitor.after_epoch(2, record, T([0] * 8), GIVEN)
    assert "collapsed" not in record and st.switch_clean_ratio is None and st.tcl_from_epoch is None
    record = {"clean_ratio_est": 0.5}
    line = monitor.after_epoch(3, record, T([0, 0, 0, 0, 0, 0, 0, 1]), GIVEN)
    assert record["pred_entropy_ratio"] < 0.5 and line.startswith("TCL collapsed at epoch 3")
    assert "optim.warmup_epochs=auto" in line
    assert monitor.summary() == {"tcl_from_epoch": 3, "collapsed_epoch": 3, "fallback_from_epoch": None,
                                 "verdict": "collapsed at epoch 3"}


@pytest.mark.parametrize("scales, advised", [((), True), (("tcl.scale1=1", "tcl.scale2=1"), False),
                                             (("tcl.scale2=1",), True)])
def test_the_line_advises_fixed_scales_only_while_one_follows_the_estimate(scales, advised):
    monitor, _, _ = _monitor("optim.warmup_epochs=3", *scales)
    line = monitor.after_epoch(3, {"clean_ratio_est": 0.5}, T([0] * 8), GIVEN)
    assert line.startswith("TCL collapsed at epoch 3") and ("set tcl.scale1=1 tcl.scale2=1" in line) == advised


def test_ce_signals_are_logged_never_judged():
    monitor, st, _ = _monitor("method=ce", "optim.warmup_epochs=auto")
    record = {"clean_ratio_est": 0.01}
    assert monitor.after_epoch(1, record, T([0] * 8), GIVEN) is None
    assert record["pred_entropy_ratio"] == 0.0 and "collapsed" not in record and st.warmup_history == []
    st.epoch = 20
    assert monitor.summary() == {"tcl_from_epoch": None, "collapsed_epoch": None, "fallback_from_epoch": None,
                                 "verdict": "ok"}  # no TCL warm-up
    assert monitor.lr_switch() == 2  # no TCL phase: the cosine starts after the ramp, a tenth of 20 epochs


def test_respond_warns_or_stops_with_the_line():
    monitor, _, said = _monitor()
    monitor.respond("TCL collapsed at epoch 3: x", "ckpt")
    assert said == ["TCL collapsed at epoch 3: x"]
    stopping, _, _ = _monitor("train.on_collapse=stop")
    with pytest.raises(CollapseStop, match=r"^TCL collapsed at epoch 3: x; checkpoint: ckpt$"):
        stopping.respond("TCL collapsed at epoch 3: x", "ckpt")
    stopping.respond(None, "ckpt")  # healthy: nothing happens


# ---- the run's verdict --------------------------------------------------------------------------------------
def test_verdict_rule_by_hand():
    tcl = method_class("tcl").judged
    assert run_verdict(tcl, 3, None, 5) == "ok"
    assert run_verdict(tcl, 5, None, 5) == "ok"                       # one TCL epoch, the last
    assert run_verdict(tcl, 6, None, 5) == "never left warm-up"
    assert run_verdict(tcl, None, None, 5) == "never left warm-up"   # auto warm-up never switched
    assert run_verdict(tcl, 3, 4, 5) == "collapsed at epoch 4"
    assert run_verdict(method_class("ce").judged, None, None, 5) == "ok"
    assert run_verdict(method_class("tcl_plus").judged, None, None, 5) == "ok"
    assert summary_verdict({"verdict": "collapsed at epoch 2"}) == "collapsed at epoch 2"
    assert summary_verdict({"test_acc": 0.5}) == "ok"                   # written before verdicts
    assert untrusted_outputs_line("ok") is None
    line = untrusted_outputs_line("never left warm-up")
    assert line.startswith("warning: label_issues.csv and the model are not to be trusted") and "\n" not in line


@pytest.mark.parametrize("overrides, epochs_done, verdict", [
    (("optim.warmup_epochs=21",), 20, "never left warm-up"),   # TCL would start at epoch 21 of 20
    (("optim.warmup_epochs=20",), 20, "ok"),                   # epoch 20 trained TCL
    (("optim.warmup_epochs=5", "train.max_steps=10"), 4, "never left warm-up"),  # max_steps ended it at epoch 4
    (("optim.warmup_epochs=auto",), 20, "never left warm-up"),  # the automatic warm-up never switched
    (("optim.warmup_epochs=30", "method=ce"), 20, "ok"),       # CE has no TCL warm-up
])
def test_summary_says_when_tcl_never_left_its_warmup(overrides, epochs_done, verdict):
    monitor, st, _ = _monitor(*overrides)
    st.epoch = epochs_done
    assert monitor.summary()["verdict"] == verdict


def test_a_resumed_collapsed_run_stops_again_or_says_it_again():
    stopping, st, _ = _monitor("optim.warmup_epochs=3", "train.on_collapse=stop")
    stopping.after_resume()  # nothing recorded: nothing happens
    st.collapsed_epoch = 4
    with pytest.raises(CollapseStop) as err:
        stopping.after_resume()
    line = str(err.value)
    assert line.startswith("TCL collapsed at epoch 4, before this resume") and "overwrite=true" in line
    assert "optim.warmup_epochs=auto" in line and "\n" not in line
    warning, st, said = _monitor("optim.warmup_epochs=3")
    st.collapsed_epoch = 4
    warning.after_resume()
    assert len(said) == 1 and "collapsed at epoch 4" in said[0]
    st.epoch = 20
    assert warning.summary()["verdict"] == "collapsed at epoch 4"


# ---- through a run (digits, CPU) ---------------------------------------------------------------------------
TINY = tiny_digits("data.limit=160", "model.proj_dim=32", "eval.knn_k=20", "train.epochs=4", "optim.warmup_epochs=auto")
COMPARED = ("test_acc", "knn_acc", "noise_auc", "clean_ratio_est", "loss", "lr", "pred_entropy_ratio")


def _train(out, *extra):
    from tcl_hf.trainer import Trainer

    return Trainer(load_config(None, [*TINY, f"output_dir={out}", *extra])).train()


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_after_the_auto_switch_continues_exactly(tmp_path, monkeypatch, fresh_accelerate):
    from tcl_hf.errors import StopRequested
    from tcl_hf.state import LossMeter

    straight = _train(tmp_path / "straight")
    # 4 epochs bound the warm-up at 2: TCL from epoch 3, whose lr starts the cosine.
    assert json.loads(sorted((tmp_path / "straight" / "checkpoints").glob("step_*"))[-1].joinpath(
        "run_state.json").read_text())["tcl_from_epoch"] == 3
    real_add = LossMeter.add

    def signal_during_step_25(self, terms, step):
        real_add(self, terms, step)
        if step == 25:  # half-way through epoch 3, the first TCL epoch (10 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(LossMeter, "add", signal_during_step_25)
    with pytest.raises(StopRequested):
        _train(tmp_path / "resumed")
    monkeypatch.undo()
    resumed = _train(tmp_path / "resumed", "train.resume=true")
    for key in COMPARED:
        assert resumed[key] == pytest.approx(straight[key], abs=1e-6), key
    for a, b in zip(_records(tmp_path / "straight"), _records(tmp_path / "resumed"), strict=True):
        assert b["lr"] == pytest.approx(a["lr"], abs=1e-9) and b["loss"] == pytest.approx(a["loss"], abs=1e-6)


@pytest.mark.slow
def test_on_collapse_stop_exits_nonzero_with_one_line_and_a_checkpoint(tmp_path, monkeypatch, capsys,
                                                                        fresh_accelerate):
    from tcl_hf.cli import main

    # Any prediction spread below 101 % of the labels' entropy counts as collapsed: the first TCL epoch fires.
    monkeypatch.setattr(health, "MIN_ENTROPY_RATIO", 1.01)
    code = main([*TINY, "optim.warmup_epochs=1", "train.on_collapse=stop", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert err[0].startswith("error: TCL collapsed at epoch 1: the classifier degenerated (")
    assert err[0].endswith(str(tmp_path / "checkpoints" / "step_00000010"))
    assert (tmp_path / "checkpoints" / "step_00000010" / "run_state.json").is_file()
    assert [r["epoch"] for r in _records(tmp_path)] == [1] and _records(tmp_path)[0]["collapsed"] is True


@pytest.mark.slow
def test_a_run_stopped_for_collapse_and_resumed_stops_again(tmp_path, monkeypatch, capsys, fresh_accelerate):
    from tcl_hf.cli import main

    monkeypatch.setattr(health, "MIN_ENTROPY_RATIO", 1.01)
    args = [*TINY, "data.limit=96", "train.epochs=2", "optim.warmup_epochs=1", "train.on_collapse=stop",
            f"output_dir={tmp_path}"]
    assert main(args) == 2
    capsys.readouterr()
    assert main([*args, "train.resume=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: TCL collapsed at epoch 1, before this resume")
    # Nothing trained on, nothing published.
    assert [r["epoch"] for r in _records(tmp_path)] == [1]
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "hub").exists()
    # A re-export of the stopped run (no summary.json) still carries the collapse, from the checkpoint.
    from tcl_hf import export

    assert export.main([str(tmp_path)]) == 0
    assert "not to be trusted: TCL collapsed at epoch 1" in capsys.readouterr().out
    assert "> **Warning: this run failed (TCL collapsed at epoch 1)" in (tmp_path / "hub" / "README.md").read_text()


@pytest.mark.slow
def test_a_collapsed_run_says_so_in_every_output(tmp_path, monkeypatch, capsys, fresh_accelerate):
    from huggingface_hub import ModelCard

    from tcl_hf.cli import main

    monkeypatch.setattr(health, "MIN_ENTROPY_RATIO", 1.01)
    assert main([*TINY, "data.limit=96", "train.epochs=1", "optim.warmup_epochs=1", "train.on_collapse=warn",
                 f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["verdict"] == "collapsed at epoch 1"
    assert (tmp_path / "label_issues.csv").is_file()  # still written
    assert len([line for line in out.splitlines() if "not to be trusted" in line]) == 1
    body = ModelCard.load(tmp_path / "hub" / "README.md").text.strip().splitlines()
    assert body[0].startswith("# ") and body[2].startswith("> **Warning: this run failed (TCL collapsed at epoch 1)")
