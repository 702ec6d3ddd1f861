"""Exact resume: a run stopped or killed part-way and resumed ends with the same metrics as an
uninterrupted one (CPU, same seed)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import tiny_digits

from tcl_hf.config import load_config
from tcl_hf.rundir import checkpoint_dirs
from tcl_hf.errors import StopRequested
from tcl_hf.state import LossMeter
from tcl_hf.trainer import Trainer

# Every test here trains or launches processes: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("test_acc", "knn_acc", "noise_auc", "label_acc", "clean_ratio_est", "loss", "loss_con", "noise_recall")
TINY = tiny_digits("data.limit=160", "model.proj_dim=32", "eval.knn_k=20", "train.epochs=3", "optim.warmup_epochs=1")


def _run(out: Path, *extra: str) -> dict:
    return Trainer(load_config(None, [*TINY, f"output_dir={out}", *extra])).train()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return _run(out), out


def _assert_same(a: dict, b: dict):
    for key in COMPARED:
        assert b[key] == pytest.approx(a[key], abs=1e-6), key


def test_stop_mid_epoch_then_resume_matches(uninterrupted, tmp_path, monkeypatch):
    reference, _ = uninterrupted
    # A real SIGTERM during step 13: one step into epoch 2 (10 steps per epoch).
    real_add = LossMeter.add

    def signal_during_step_13(self, terms, step):
        real_add(self, terms, step)
        if step == 13:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(LossMeter, "add", signal_during_step_13)
    with pytest.raises(StopRequested) as stop:
        _run(tmp_path)
    assert stop.value.checkpoint.name == "step_00000013"
    monkeypatch.undo()
    resumed = _run(tmp_path, "train.resume=true")
    _assert_same(reference, resumed)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_sigkill_then_resume_matches(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, str(REPO / "train.py"), *TINY, f"output_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Kill as soon as the first checkpoint is complete: the run dies somewhere in epoch 2.
    while not checkpoint_dirs(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint_dirs(tmp_path), "the run never wrote a checkpoint"
    assert not (tmp_path / "summary.json").exists()
    rerun = subprocess.run(cmd + ["train.resume=true"], cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _assert_same(reference, json.loads((tmp_path / "summary.json").read_text()))


def test_resume_keeps_only_last_checkpoints_and_ignores_partial(uninterrupted, tmp_path):
    _, out = uninterrupted
    names = [p.name for p in checkpoint_dirs(out)]
    assert names == ["step_00000020", "step_00000030"]
    # A half-written checkpoint (the hidden temporary folder) is never picked up.
    (out / "checkpoints" / ".tmp-step_00000040").mkdir()
    assert [p.name for p in checkpoint_dirs(out)] == names


def test_resume_with_other_settings_is_refused(uninterrupted):
    from tcl_hf.errors import ConfigError

    _, out = uninterrupted
    with pytest.raises(ConfigError, match="seed"):
        _run(out, "train.resume=true", "seed=3")


def test_a_resume_without_a_checkpoint_redoes_the_records_of_the_killed_start(uninterrupted, tmp_path):
    # Killed after writing epoch 1's record but before its checkpoint: the records must not be doubled.
    summary, straight = uninterrupted
    out = tmp_path / "killed_early"
    out.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        (out / name).write_bytes((straight / name).read_bytes())
    resumed = _run(out, "train.resume=true")
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    _assert_same(summary, resumed)


def test_every_value_of_the_run_state_has_its_type_and_range():
    from tcl_hf.state import RunState

    assert set(RunState.SCALARS) == set(vars(RunState(6, 3, 4))) - {*RunState.TENSORS, *RunState.LATER_TENSORS}


@pytest.mark.parametrize("key, value", [("epoch", "three"), ("step", -5), ("switch_clean_ratio", 1.5),
                                        ("loss_sums", {"loss": "x"}), ("warmup_history", [[0.5]])])
def test_run_state_with_a_wrong_value_is_refused_naming_the_key(tmp_path, key, value):
    from tcl_hf.state import RUN_STATE_JSON, RunState

    RunState(6, 3, 4).save(tmp_path)
    scalars = json.loads((tmp_path / RUN_STATE_JSON).read_text())
    (tmp_path / RUN_STATE_JSON).write_text(json.dumps({**scalars, key: value}))
    state = RunState(6, 3, 4)
    with pytest.raises(ValueError, match=f"{RUN_STATE_JSON}: {key}"):
        state.load(tmp_path)
    assert state.epoch == 0 and state.step == 0  # nothing half-restored


def test_a_checkpoint_whose_run_state_is_wrong_is_skipped_for_the_older_one(uninterrupted, tmp_path, capsys):
    import shutil

    from tcl_hf.rundir import MANIFEST_FILE, write_manifest
    from tcl_hf.state import RUN_STATE_JSON

    _, straight = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    newest = checkpoint_dirs(out)[-1]
    scalars = json.loads((newest / RUN_STATE_JSON).read_text())
    (newest / RUN_STATE_JSON).write_text(json.dumps({**scalars, "epoch": "three"}))
    (newest / MANIFEST_FILE).unlink()
    write_manifest(newest)  # consistent: only the value is wrong, as a hand edit or a bug would leave it
    trainer = Trainer(load_config(None, [*TINY, f"output_dir={out}", "train.resume=true"]))
    assert trainer.resume()
    assert trainer._resumed_from.name == "step_00000020" and trainer.state.epoch == 2
    said = capsys.readouterr().out
    assert f"skipped checkpoint {newest.name}" in said and "epoch" in said and "'three'" in said
