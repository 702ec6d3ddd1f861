"""The run folder under faults: cluster stops, concurrent launches, overwrite, damaged checkpoints and logs.

Each test plays the fault for real (a process-group SIGTERM, two launches, bytes flipped on disk) and checks
that nothing the user had is lost and that every message is one line.
"""
from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import tiny_digits

from tcl_hf import rundir
from tcl_hf.rundir import checkpoints as ckpt
from tcl_hf.rundir import lock as run_lock
from tcl_hf.config import load_config
from tcl_hf.errors import ConfigError, DataError, TCLError
from tcl_hf.rundir import checkpoint_dirs
from tcl_hf.trainer import Trainer

# Every test here trains or launches processes: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
TINY = tiny_digits("train.epochs=2", "optim.warmup_epochs=1")


def _train(out: Path, *extra: str) -> dict:
    return Trainer(load_config(None, [*TINY, f"output_dir={out}", *extra])).train()


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---- stops from a scheduler -------------------------------------------------------------------------
def test_process_group_sigterm_with_loader_workers_saves_and_exits_zero(tmp_path):
    # Lazy decoding keeps two loader workers busy; the signal goes to the whole group, as `scancel` and
    # `timeout` send it.
    args = [*TINY, f"output_dir={tmp_path}", "train.epochs=30", "data.limit=320", "data.in_memory=false",
            "data.num_workers=2"]
    proc = _cli(*args, start_new_session=True)
    deadline = time.time() + 240
    while not checkpoint_dirs(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    children = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 3, "the run should have its two loader workers alive"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "killed by signal" not in err
    newest = checkpoint_dirs(tmp_path)[-1]
    assert rundir.checkpoint_problem(newest) is None
    assert str(newest) in err and "train.resume=true" in err


# ---- one run per folder -----------------------------------------------------------------------------
def test_second_concurrent_launch_is_refused_at_once(tmp_path):
    args = [*TINY, f"output_dir={tmp_path}", "train.epochs=3", "data.limit=160"]
    first = _cli(*args)
    time.sleep(0.3)
    started = time.time()
    second = _cli(*args)
    _, err2 = second.communicate(timeout=240)
    refused_after = time.time() - started
    _, err1 = first.communicate(timeout=600)
    results = sorted([(first.returncode, err1), (second.returncode, err2)], key=lambda r: r[0])
    (ok_code, _), (bad_code, bad_err) = results
    assert ok_code == 0 and bad_code == 2
    assert "Traceback" not in bad_err
    (line,) = _error_lines(bad_err)
    assert "in use by another tcl_hf run" in line and str(tmp_path) in line and "pid" in line
    if second.returncode == 2:
        # Refused at start-up, long before the first run could have finished an epoch.
        assert refused_after < 60
    epochs = [r["epoch"] for r in rundir.read_metrics(tmp_path)]
    assert epochs == [1, 2, 3]


def test_the_lock_is_released_when_a_run_ends(tmp_path):
    _train(tmp_path, "train.max_steps=1")
    # The kernel dropped the flock with the file descriptor: the folder can be locked again.
    rundir.RunLock(tmp_path).acquire().release()


def test_lock_file_fallback_takes_over_from_a_dead_process(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid_file = tmp_path / (rundir.LOCK_FILE.removesuffix(".lock") + ".pid")
    pid_file.write_text(f"{run_lock.socket.gethostname()} pid {int(dead.stdout)}")
    lock = rundir.RunLock(tmp_path).acquire()
    assert f"pid {os.getpid()}" in pid_file.read_text()
    with pytest.raises(TCLError, match="in use by another tcl_hf run"):
        rundir.RunLock(tmp_path).acquire()
    lock.release()
    assert not pid_file.exists()


# ---- overwrite ----------------------------------------------------------------------------------------
def test_empty_output_dir_is_refused():
    with pytest.raises(ConfigError, match="output_dir: must not be empty"):
        load_config(None, [*TINY, "output_dir="])


def test_overwrite_refuses_a_folder_that_holds_no_tcl_hf_run(tmp_path):
    for name in ("hub", "plots", "checkpoints"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "precious.txt").write_text(name)
    with pytest.raises(ConfigError, match="no tcl_hf run"):
        Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", "overwrite=true"]))
    assert all((tmp_path / name / "precious.txt").read_text() == name for name in ("hub", "plots", "checkpoints"))


def test_overwrite_keeps_the_old_run_until_the_new_one_has_its_data(tmp_path):
    _train(tmp_path, "train.max_steps=1")
    before = {name: (tmp_path / name).exists() for name in rundir.RUN_OUTPUTS}
    summary = (tmp_path / "summary.json").read_bytes()
    labels = tmp_path.parent / f"{tmp_path.name}_bad_labels.npy"
    import numpy as np

    np.save(labels, np.zeros(5, dtype=np.int64))  # wrong length: the new run fails while loading its data
    with pytest.raises(DataError):
        Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", "overwrite=true", "noise.type=file",
                                   f"noise.file={labels}"]))
    assert {name: (tmp_path / name).exists() for name in rundir.RUN_OUTPUTS} == before
    assert (tmp_path / "summary.json").read_bytes() == summary


# ---- resume -------------------------------------------------------------------------------------------
@pytest.fixture
def two_checkpoints(tmp_path):
    _train(tmp_path)  # 2 epochs of 6 steps: step_00000006 and step_00000012
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000006", "step_00000012"]
    return tmp_path


def _resume(out: Path, capsys) -> tuple[Trainer, str]:
    trainer = Trainer(load_config(None, [*TINY, f"output_dir={out}", "train.resume=true", "train.epochs=3"]))
    assert trainer.resume()
    return trainer, capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate", "garble", "no_manifest", "garble_undetected_by_size"])
def test_resume_falls_back_past_a_damaged_newest_checkpoint(two_checkpoints, capsys, damage):
    newest = checkpoint_dirs(two_checkpoints)[-1]
    weights = newest / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garble":
        weights.write_bytes(b"\0" * 64 + data[64:])
    elif damage == "garble_undetected_by_size":
        # Same size, a flipped byte deep in the tensors: only the hash tells.
        middle = len(data) // 2
        weights.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    else:
        (newest / rundir.MANIFEST_FILE).unlink()
    trainer, out = _resume(two_checkpoints, capsys)
    assert trainer.state.step == 6 and trainer.state.epoch == 1
    assert "skipped checkpoint step_00000012" in out


def test_a_checkpoint_that_does_not_load_is_skipped(two_checkpoints, capsys):
    newest = checkpoint_dirs(two_checkpoints)[-1]
    # Well-formed on disk (manifest rewritten to match) but for another model: loading fails.
    (newest / "run_state.safetensors").write_bytes((checkpoint_dirs(two_checkpoints)[0] / "model.safetensors")
                                                   .read_bytes())
    (newest / rundir.MANIFEST_FILE).unlink()
    rundir.write_manifest(newest)
    trainer, out = _resume(two_checkpoints, capsys)
    assert trainer.state.step == 6
    assert "skipped checkpoint step_00000012: does not load" in out


def test_run_state_is_not_unpickled(two_checkpoints):
    newest = checkpoint_dirs(two_checkpoints)[-1]
    assert not list(newest.glob("custom_checkpoint_*"))
    marker = two_checkpoints / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    # A tampered folder: the file accelerate would unpickle for a registered object.
    (newest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Evil()))
    trainer = Trainer(load_config(None, [*TINY, f"output_dir={two_checkpoints}", "train.resume=true"]))
    assert trainer.resume()
    assert not marker.exists()
    # Our own state is safetensors + JSON: nothing in a checkpoint is unpickled with trust.
    assert {p.name for p in checkpoint_dirs(two_checkpoints)[0].glob("run_state.*")} == {
        "run_state.safetensors", "run_state.json"}


def test_same_step_replacement_never_leaves_no_checkpoint(two_checkpoints, monkeypatch):
    final = checkpoint_dirs(two_checkpoints)[-1]
    tmp = final.with_name(".tmp-" + final.name)
    import shutil

    shutil.copytree(final, tmp)
    real = os.replace
    calls = []

    def killed_after_first_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies between setting the old one aside and renaming the new
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt._move_into_place(tmp, final)
    monkeypatch.undo()
    found = checkpoint_dirs(two_checkpoints)
    assert [ckpt._step_of(p.name) for p in found] == [6, 12]
    assert found[-1].name.startswith(ckpt.REPLACED_PREFIX) and rundir.checkpoint_problem(found[-1]) is None


def test_torn_last_metrics_line_does_not_stop_a_resume(two_checkpoints):
    with open(two_checkpoints / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "test_acc": 0.')
    summary = _train(two_checkpoints, "train.resume=true", "train.epochs=3")
    assert summary["epochs_completed"] == 3
    assert [r["epoch"] for r in rundir.read_metrics(two_checkpoints)] == [1, 2, 3]


@pytest.mark.parametrize("error", [RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_any_write_error_during_a_checkpoint_is_one_line_and_leaves_no_temporary_folder(tmp_path, monkeypatch, error):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = []

    def fails_on_the_second_checkpoint(tensors, filename, *args, **kwargs):
        if Path(filename).name == "run_state.safetensors":
            calls.append(filename)
            if len(calls) == 2:
                Path(filename).write_bytes(b"half")
                raise error
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", fails_on_the_second_checkpoint)
    with pytest.raises(TCLError) as err:
        _train(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "could not write checkpoint" in message
    assert "the previous one is intact" in message and "step_00000006" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000006"]
    assert rundir.checkpoint_problem(tmp_path / "checkpoints" / "step_00000006") is None
