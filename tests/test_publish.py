"""Publishing is the job's, from values: the job holds the run folder's lock and the tracker around training and
publishing; a re-export rebuilds the run from its folder without a trainer and writes what the run wrote."""
from __future__ import annotations

import gc
import json
import shutil
import weakref
from pathlib import Path

import pytest
import safetensors.torch
from accelerate import Accelerator
from accelerate.state import PartialState
from fixtures import tiny_digits

from tcl_hf import export, job, rundir
from tcl_hf.config import load_config
from tcl_hf.errors import TCLError
from tcl_hf.state import RUN_STATE_TENSORS, RunState
from tcl_hf.trainer import Trainer

# Every test here trains: left out of the quick inner loop (pytest -m "not slow").
pytestmark = pytest.mark.slow

PUBLISHED = ["hub/model.safetensors", "hub/config.json", "hub/README.md", "hub/tcl_model.safetensors",
             "hub/tcl_config.json", rundir.LABEL_ISSUES_FILE]


class FakeTracker:
    """Stands in for accelerate's wandb tracker: records what it is sent and how often it is finished."""
    name = "fake"

    def __init__(self, events: list):
        self.events = events

    def log(self, values: dict, step=None, **kwargs):
        self.events.append(("log", sorted(values), step))

    def finish(self):
        self.events.append(("finish",))


def _locked(folder: Path) -> bool:
    try:
        rundir.RunLock(folder).acquire().release()
    except TCLError:
        return True
    return False


def _instrumented_job(out: Path, monkeypatch, events: list, *, keep_process_group=False,
                      fail_publishing=False) -> None:
    """run_job on a tiny run, recording in ``events`` when training ends, what publishing sees, the tracker's calls
    and the process group's end."""
    trainers = []
    train = Trainer.train

    def recorded_train(self):
        trainers.append(weakref.ref(self))
        summary = train(self)
        events.append(("trained",))
        return summary

    publish = job.publish_run

    def recorded_publish(result, **kwargs):
        gc.collect()
        events.append(("publish", _locked(out), [t() is None for t in trainers]))
        if fail_publishing:
            raise RuntimeError("disk gone")
        return publish(result, **kwargs)

    def fake_init_trackers(self, project, config=None, init_kwargs=None):
        self.trackers = [FakeTracker(events)]

    monkeypatch.setattr(Trainer, "train", recorded_train)
    monkeypatch.setattr(job, "publish_run", recorded_publish)
    monkeypatch.setattr(Accelerator, "init_trackers", fake_init_trackers)
    monkeypatch.setattr(PartialState, "destroy_process_group", lambda self, group=None: events.append(("ended",)))
    # The push is the network's boundary: recorded, never made.
    def recorded_push(folder, repo, **kwargs):
        events.append(("push", repo, _locked(out)))
        return f"https://huggingface.co/{repo}"

    monkeypatch.setattr(job, "push_folder", recorded_push)
    cfg = load_config(None, tiny_digits("data.limit=64", "eval.knn_k=5", "train.epochs=1", "log.with=wandb",
                                        "hub.repo_id=me/tiny-tcl", f"output_dir={out}"))
    job.run_job(cfg, keep_process_group=keep_process_group)


@pytest.fixture(scope="module")
def published_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        out = tmp_path_factory.mktemp("publish") / "run"
        events = []
        _instrumented_job(out, mp, events, keep_process_group=True)
    return out, events, {name: (out / name).read_bytes() for name in PUBLISHED}


def test_the_job_publishes_after_the_trainer_is_gone_under_the_lock_and_tracks_the_plots_once(published_run):
    out, events, _ = published_run
    # The push comes last, once the folder is released.
    assert [e[0] for e in events if e[0] != "log"] == ["trained", "publish", "finish", "push"]
    assert events[-1] == ("push", "me/tiny-tcl", False)
    assert "hf-hub:me/tiny-tcl" in (out / "hub" / "README.md").read_text()
    _, locked, trainers_gone = next(e for e in events if e[0] == "publish")
    assert locked and trainers_gone == [True]
    # The plots reach the tracker after publishing (they are written there), at the run's last epoch, once.
    plots = [e for e in events if e[0] == "log" and any(k.startswith("plots/") for k in e[1])]
    assert plots == [("log", ["plots/clean_prob", "plots/curves"], 1)]
    assert events.index(plots[0]) > events.index(next(e for e in events if e[0] == "publish"))
    # A sweep's job keeps the process group; the folder is free once the job is over.
    assert ("ended",) not in events and not _locked(out)


def test_a_failed_publish_frees_the_folder_finishes_the_tracker_and_ends_the_group(tmp_path, monkeypatch):
    out, events = tmp_path / "run", []
    with pytest.raises(RuntimeError, match="disk gone"):
        _instrumented_job(out, monkeypatch, events, fail_publishing=True)
    assert not _locked(out)  # free for the resume or a new run
    assert [e for e in events if e[0] != "log"] == [("trained",), ("publish", True, [True]), ("finish",), ("ended",)]


def test_reexport_builds_no_trainer_and_writes_what_the_run_published(published_run, tmp_path, monkeypatch):
    run, _, original = published_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    for name in PUBLISHED:
        (out / name).unlink()
    # As after a publish that never happened: the marker does not list the published files.
    marker = json.loads((out / rundir.RUN_MARKER_FILE).read_text())
    marker["written"] = [w for w in marker["written"] if w not in PUBLISHED]
    (out / rundir.RUN_MARKER_FILE).write_text(json.dumps(marker))

    def no_trainer(*args, **kwargs):
        raise AssertionError("a re-export built a Trainer")

    publish, seen = export.publish_run, []

    def recorded_publish(result, **kwargs):
        seen.append(_locked(out))
        return publish(result, **kwargs)

    monkeypatch.setattr(Trainer, "__init__", no_trainer)
    monkeypatch.setattr(export, "publish_run", recorded_publish)
    assert export.main([str(out)]) == 0
    assert seen == [True]
    # Byte for byte: the weights, the TCL state, the timm config, the card (metrics and the run's repo id included)
    # and the label report.
    for name in PUBLISHED:
        assert (out / name).read_bytes() == original[name], name
    written = json.loads((out / rundir.RUN_MARKER_FILE).read_text())["written"]
    assert set(PUBLISHED) <= set(written)


def test_an_old_checkpoint_resumes_but_its_reexport_is_one_line(published_run, tmp_path):
    run, _, _ = published_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    newest = rundir.checkpoint_dirs(out)[-1]
    tensors = safetensors.torch.load_file(str(newest / RUN_STATE_TENSORS))
    older = {k: v for k, v in tensors.items() if k not in RunState.LATER_TENSORS}
    assert set(older) == {"confidences", "assignments", "prototypes"}  # what checkpoints held before
    safetensors.torch.save_file(older, str(newest / RUN_STATE_TENSORS))
    (newest / rundir.MANIFEST_FILE).unlink()
    rundir.write_manifest(newest)
    # The run resumes from it as before (the state's later tensors keep their defaults) ...
    n, c = older["assignments"].shape
    state = RunState(n, c, older["prototypes"].shape[1])
    state.load(newest)
    assert state.confidences.equal(older["confidences"]) and bool((state.predictions == -1).all())
    # ... but it holds no last EM step to publish.
    with pytest.raises(TCLError) as err:
        export.finished_run(out)
    message = str(err.value)
    assert "\n" not in message and newest.name in message and "predates" in message
