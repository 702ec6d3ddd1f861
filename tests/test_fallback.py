"""``train.on_collapse=fallback``: the pieces by hand (the records and checkpoints a fallback keeps, its verdict, its
line, the monitor and the schedule after it, an old checkpoint without its fields), then through runs on a tiny
setting that really collapses: 480 digits, a two-epoch warm-up, then TCL with the label's weight at 0 and no balance
term at eight times the quickstart's lr. Over seeds 0-4 (bench/outcome_margins.py, case ``fallback``, which trains
on past the line with ``warn``) the first TCL epoch (3) stays above the line (0.54-0.75 of the labels' entropy; the
line is 0.5), the second (4) fires on every seed, and the lowest spread over the TCL epochs 3-6 is at most 0.26 (a
47 % margin). So the test accepts a collapse at any TCL epoch, checks that it happened, then what the run did after
it: back to its checkpoint of epoch 2, the epochs from 3 to 6 again as CE. A run killed before or after the fallback
resumes to the same numbers."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures import tiny_digits

from tcl_hf import rundir
from tcl_hf.config import load_config
from tcl_hf.errors import ConfigError
from tcl_hf.health import CollapseStop, HealthMonitor, collapse_message
from tcl_hf.methods import create_method
from tcl_hf.rundir.checkpoints import write_checkpoint
from tcl_hf.schedule import Schedule
from tcl_hf.state import LossMeter, RunState
from tcl_hf.verdict import fell_back, run_verdict, untrusted_outputs_line

T = torch.tensor


# ---- by hand ---------------------------------------------------------------------------------------------
def test_the_records_behind_a_checkpoint_by_hand():
    tcl = [{"epoch": e} for e in (1, 2, 3, 4)]
    ce = [{"epoch": e, "fell_back": True} for e in (3, 4)]
    # No fallback: up to the checkpoint's epoch.
    assert rundir.trajectory_records(tcl, 2) == tcl[:2]
    # Fell back after TCL collapsed at epoch 4 (back to epoch 2): all of TCL's, then CE's up to the checkpoint.
    assert rundir.trajectory_records(tcl + ce, 3, collapsed_at=4) == tcl + ce[:1]
    assert rundir.trajectory_records(tcl + ce, 2, collapsed_at=4) == tcl
    # A checkpoint from before the fallback (its state has none) drops the fallback's records too.
    assert rundir.trajectory_records(tcl + ce, 3) == tcl[:3]


def _write(root: Path, step: int, keep: int, pinned: int | None) -> None:
    write_checkpoint(root, step, lambda folder: (folder / "x").write_text(str(step)), keep, True, lambda: None,
                     pinned=pinned)


def test_the_checkpoint_to_fall_back_to_outlives_the_rotation(tmp_path):
    for step in (10, 20, 30, 40, 50):
        _write(tmp_path, step, keep=2, pinned=20)
    assert [p.name for p in rundir.checkpoint_dirs(tmp_path)] == ["step_00000020", "step_00000040", "step_00000050"]
    assert rundir.checkpoint_of_step(tmp_path, 20).name == "step_00000020"
    assert rundir.checkpoint_of_step(tmp_path, 30) is None and rundir.checkpoint_of_step(tmp_path, None) is None
    # Going back to step 20 leaves nothing after it, a half-written one included.
    (tmp_path / "checkpoints" / ".tmp-step_00000060").mkdir()
    rundir.remove_checkpoints_after(tmp_path, 20)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000020"]
    # Unpinned, the rotation keeps the newest two only.
    for step in (30, 40):
        _write(tmp_path, step, keep=2, pinned=None)
    assert [p.name for p in rundir.checkpoint_dirs(tmp_path)] == ["step_00000030", "step_00000040"]


def test_the_verdict_and_the_line_of_a_fallback():
    assert run_verdict(True, 3, 4, 6, fell_back=True) == "fell back to CE at epoch 4"
    assert run_verdict(True, 3, 4, 6) == "collapsed at epoch 4"
    assert fell_back("fell back to CE at epoch 4") and not fell_back("collapsed at epoch 4") and not fell_back("ok")
    note = untrusted_outputs_line("fell back to CE at epoch 4")
    assert note.startswith("note: label_issues.csv and the model are the CE baseline's: TCL fell back to CE at "
                           "epoch 4: ") and "not to be trusted" not in note
    line = collapse_message(4, ["its predictions cover few classes (entropy 0.20 of the labels')"], "bounded",
                            "fallback", False, back_to=2)
    assert line.startswith("TCL collapsed at epoch 4: the classifier degenerated (its predictions cover few classes "
                           "(entropy 0.20 of the labels')); falling back to CE: from its checkpoint of epoch 2 "
                           "(before TCL began) the run trains on as method=ce would (train.on_collapse=fallback). "
                           "For TCL itself, train again: the automatic warm-up reached optim.max_warmup_epochs")
    assert "\n" not in line


def test_on_collapse_takes_fallback_and_names_it_when_wrong():
    assert load_config(None, ["train.on_collapse=fallback"]).train.on_collapse == "fallback"
    with pytest.raises(ConfigError, match=r"train\.on_collapse.*warn \| stop \| fallback"):
        load_config(None, ["train.on_collapse=back"])


def _monitored(*overrides):
    cfg = load_config(None, ["train.epochs=20", "train.on_collapse=fallback", *overrides])
    state, said = RunState(8, 4, 2), []
    method = create_method(cfg, None)
    schedule = Schedule(cfg, method, state, total_batch=256, steps_per_epoch=10, say=said.append)
    return HealthMonitor(cfg, method, schedule, state, 4, said.append), schedule, state, said


GIVEN = T([0, 0, 1, 1, 2, 2, 3, 3])
ONE_CLASS = torch.zeros(8, dtype=torch.long)


def test_after_a_fallback_nothing_is_judged_and_the_schedule_is_ces():
    monitor, schedule, st, said = _monitored("optim.warmup_epochs=3")
    assert [e for e in range(6) if schedule.tcl_starts_after(e)] == [2]  # TCL from epoch 3: its checkpoint is 2's
    line = monitor.after_epoch(3, {"clean_ratio_est": 0.5}, ONE_CLASS, GIVEN)
    assert "falling back to CE: from its checkpoint of epoch 2" in line and st.collapsed_epoch == 3
    st.fallback_from, st.epoch = 2, 2  # what Trainer._fall_back does next
    record = {"clean_ratio_est": 0.5}
    assert monitor.after_epoch(3, record, ONE_CLASS, GIVEN) is None and "collapsed" not in record
    st.epoch = 20
    assert monitor.summary() == {"tcl_from_epoch": 3, "collapsed_epoch": 3, "fallback_from_epoch": 2,
                                 "verdict": "fell back to CE at epoch 3"}
    monitor.after_resume()
    assert said[-1].startswith("note: TCL collapsed at epoch 3 and this run fell back to CE from its checkpoint of "
                               "epoch 2")
    # An automatic warm-up's cosine starts at TCL's switch; CE's (and a fallback's) where the lr ramp ends (2 of 20).
    auto, schedule, st, _ = _monitored("optim.warmup_epochs=auto")
    st.tcl_from_epoch = 7
    assert schedule.lr_switch() == 6
    st.fallback_from = 6
    assert schedule.lr_switch() == 2


def test_a_checkpoint_written_before_the_fallback_fields_still_loads(tmp_path):
    state = RunState(4, 2, 3)
    state.save(tmp_path)
    saved = json.loads((tmp_path / "run_state.json").read_text())
    for key in RunState.LATER_SCALARS:
        del saved[key]
    (tmp_path / "run_state.json").write_text(json.dumps(saved))
    loaded = RunState(4, 2, 3)
    loaded.fallback_from, loaded.before_tcl_step = 5, 40  # the load resets them to the defaults
    loaded.load(tmp_path)
    assert loaded.fallback_from is None and loaded.before_tcl_step is None
    saved["stray"] = 1  # anything else unknown still refuses the checkpoint
    (tmp_path / "run_state.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="does not match"):
        RunState(4, 2, 3).load(tmp_path)


# ---- through runs (digits, CPU) ------------------------------------------------------------------------------
COLLAPSING = tiny_digits("data.limit=480", "train.batch_size=32", "model.proj_dim=32", "eval.knn_k=20",
                         "aug.crop_padding=2", "aug.strong_scale_min=0.5", "aug.hflip=false", "train.epochs=6",
                         "optim.warmup_epochs=3", "optim.lr=0.8", "tcl.scale1=0", "tcl.scale2=0", "tcl.lambda_ne=0",
                         "train.on_collapse=fallback")
COMPARED = ("test_acc", "knn_acc", "noise_auc", "clean_ratio_est", "loss", "lr", "pred_entropy_ratio", "verdict")
STEPS = 15  # per epoch: 480 samples, batch 32


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fallen(tmp_path_factory):
    """The collapsing run through the command line, and the CE baseline on the same settings."""
    from conftest import reset_accelerate

    from tcl_hf.cli import main

    root = tmp_path_factory.mktemp("fallback")
    out, err = io.StringIO(), io.StringIO()
    reset_accelerate()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*COLLAPSING, f"output_dir={root / 'tcl'}"])
    reset_accelerate()
    with contextlib.redirect_stdout(io.StringIO()):
        ce = main([*COLLAPSING, "method=ce", f"output_dir={root / 'ce'}"])
    assert code == 0 and ce == 0, err.getvalue()
    summary = json.loads((root / "tcl" / "summary.json").read_text())
    return {"out": out.getvalue(), "dir": root / "tcl", "ce": root / "ce", "summary": summary,
            "records": _records(root / "tcl"), "collapsed": summary["collapsed_epoch"]}


@pytest.mark.slow
def test_a_collapse_falls_back_to_ce_from_the_checkpoint_before_tcl(fallen):
    records, ce, summary, collapsed = fallen["records"], _records(fallen["ce"]), fallen["summary"], fallen["collapsed"]
    # It collapsed in TCL's phase (the module docstring), and went back to the end of epoch 2.
    assert collapsed in (3, 4, 5, 6), summary
    assert [(r["epoch"], r.get("fell_back", False)) for r in records] == [
        *((e, False) for e in range(1, collapsed + 1)), *((e, True) for e in range(3, 7))]
    tcl = records[collapsed - 1]
    assert tcl["collapsed"] is True and tcl["pred_entropy_ratio"] < 0.5 and "loss_con" in tcl
    # Epochs 3-6 again, as the CE baseline: its loss terms and, epoch for epoch, its lr (with this fixed warm-up CE's lr
    # and TCL's agree, so this checks that the step count went back with the checkpoint; CE's own cosine after an
    # automatic warm-up: test_after_a_fallback_nothing_is_judged_and_the_schedule_is_ces).
    for after, baseline in zip(records[collapsed:], ce[2:], strict=True):
        assert set(after) >= {"loss", "loss_cls"} and not {"loss_con", "loss_align", "collapsed"} & set(after)
        assert after["lr"] == pytest.approx(baseline["lr"], rel=1e-6)
    assert (summary["verdict"], summary["fallback_from_epoch"], summary["tcl_from_epoch"],
            summary["epochs_completed"]) == (f"fell back to CE at epoch {collapsed}", 2, 3, 6)
    assert summary["test_acc"] == records[-1]["test_acc"]
    # The checkpoint it went back to is kept and says so; no TCL checkpoint after it is left.
    names = [p.name for p in rundir.checkpoint_dirs(fallen["dir"])]
    assert names == ["step_00000030", f"step_{5 * STEPS:08d}", f"step_{6 * STEPS:08d}"]
    pinned = json.loads((fallen["dir"] / "checkpoints" / "step_00000030" / "run_state.json").read_text())
    assert (pinned["epoch"], pinned["fallback_from"], pinned["collapsed_epoch"]) == (2, 2, collapsed)


@pytest.mark.slow
def test_a_fallback_is_said_once_and_named_in_every_output(fallen):
    out, run, n = fallen["out"], fallen["dir"], fallen["collapsed"]
    lines = [line for line in out.splitlines() if f"epoch {n}" in line and "TCL" in line]
    assert len(lines) == 2, out  # the fallback line, and the note after publishing
    assert lines[0].startswith(f"TCL collapsed at epoch {n}: the classifier degenerated (") and \
        "falling back to CE: from its checkpoint of epoch 2" in lines[0]
    assert lines[1].startswith(f"note: label_issues.csv and the model are the CE baseline's: TCL fell back to CE at "
                               f"epoch {n}")
    card = (run / "hub" / "README.md").read_text()
    assert f"> **Note: TCL fell back to CE at epoch {n}.**" in card and "Warning" not in card
    assert "plain cross-entropy (the baseline of the tcl_hf project), continued from the warm-up" in card
    assert f"TCL fell back to CE at epoch {n}" in (run / "label_issues.html").read_text()
    assert (run / "label_issues.csv").is_file() and (run / "plots" / "curves.png").is_file()
    # A re-export from the checkpoint (no Trainer) names it the same way.
    from tcl_hf import export

    before = (run / "label_issues.csv").read_text()
    with contextlib.redirect_stdout(io.StringIO()) as said:
        assert export.main([str(run)]) == 0
    assert f"note: label_issues.csv and the model are the CE baseline's: TCL fell back to CE at epoch {n}" in \
        said.getvalue()
    assert (run / "hub" / "README.md").read_text() == card and (run / "label_issues.csv").read_text() == before


class Killed(BaseException):
    """kill -9 in the middle of a step: nothing after it runs, nothing is saved."""


def _train(out: Path, *extra: str) -> dict:
    from conftest import reset_accelerate

    from tcl_hf.trainer import Trainer

    reset_accelerate()
    return Trainer(load_config(None, [*COLLAPSING, f"output_dir={out}", *extra])).train()


# Counted over every step trained, the half-way steps of the collapsing epoch N and of the first epoch trained again
# as CE (which follows the first N epochs).
@pytest.mark.slow
@pytest.mark.parametrize("epochs_before", [lambda n: n - 1, lambda n: n], ids=["in the collapsing epoch",
                                                                                "in the first CE epoch"])
def test_a_run_killed_around_the_fallback_resumes_to_the_same_numbers(tmp_path, monkeypatch, fallen, epochs_before):
    expected, expected_records = fallen["summary"], fallen["records"]
    killed_at = epochs_before(fallen["collapsed"]) * STEPS + STEPS // 2
    real_add, calls = LossMeter.add, []

    def dies(self, terms, step):
        calls.append(step)
        if len(calls) == killed_at:
            raise Killed
        real_add(self, terms, step)

    monkeypatch.setattr(LossMeter, "add", dies)
    with pytest.raises(Killed):
        _train(tmp_path)
    monkeypatch.undo()
    resumed = _train(tmp_path, "train.resume=true")
    for key in COMPARED:
        assert resumed[key] == pytest.approx(expected[key], abs=1e-6), key
    records = _records(tmp_path)
    assert [(r["epoch"], r.get("fell_back")) for r in records] == [(r["epoch"], r.get("fell_back"))
                                                                   for r in expected_records]
    for a, b in zip(expected_records, records):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6) and b["lr"] == pytest.approx(a["lr"], abs=1e-9)


@pytest.mark.slow
def test_without_its_checkpoint_a_fallback_stops_with_one_line(tmp_path, monkeypatch):
    real_add = LossMeter.add

    def user_deletes_it(self, terms, step):
        if step == 2 * STEPS + 1:  # TCL's first step: the checkpoint of epoch 2 is the one to go back to
            shutil.rmtree(tmp_path / "checkpoints" / "step_00000030", ignore_errors=True)
        real_add(self, terms, step)

    monkeypatch.setattr(LossMeter, "add", user_deletes_it)
    with pytest.raises(CollapseStop, match=r"^TCL collapsed at epoch [3-6] and cannot fall back to CE: its checkpoint "
                                           r"from before TCL began \(step 30\) cannot be used \(gone\); train again "
                                           r"with overwrite=true$"):
        _train(tmp_path)


@pytest.mark.parametrize("overrides, unused", [(["train.on_collapse=fallback"], True),
                                               (["train.on_collapse=warn"], False),
                                               (["method=ce", "train.on_collapse=warn"], True)])
def test_ddp_looks_for_unused_parameters_when_a_run_may_fall_back_to_ce(tmp_path, fresh_accelerate, overrides,
                                                                        unused):
    # CE's step leaves TCL's projector without gradients; DDP without the search would stop at the first CE step.
    from tcl_hf.distributed import build_accelerator

    acc = build_accelerator(load_config(None, [*overrides, f"output_dir={tmp_path}"]))
    assert acc.ddp_handler.find_unused_parameters is unused
