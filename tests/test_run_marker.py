"""What a run may write over or remove: only a folder tcl_hf marked as its run, only the files it wrote there, never
through a symbolic link, and never into the file system's root, the home folder or the folder it is run from.

Each test plants the user's files first and checks they are still there, byte for byte, after tcl_hf refused or ran.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures import tiny_digits

from tcl_hf import rundir
from tcl_hf.config import load_config, save_config, to_dict
from tcl_hf.errors import ConfigError, TCLError

TINY = tiny_digits("data.limit=48", "eval.knn_k=5", "train.epochs=1", "optim.warmup_epochs=1")

# A Hydra-style experiment folder: a config.yaml with method, data and model keys, and outputs under the same names
# tcl_hf uses.
HYDRA = {"config.yaml": "method: simclr\ndata: {name: imagenet}\nmodel: {arch: resnet50}\n",
         "metrics.jsonl": '{"loss": 1.0}\n', "checkpoints/epoch_90.pt": "weights", "plots/loss.png": "png"}


def plant(folder: Path, files: dict[str, str]) -> dict[str, str]:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return files


def intact(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / name).read_text() == text for name, text in files.items())


def config_for(out: Path, *extra: str) -> dict:
    return to_dict(load_config(None, [*TINY, f"output_dir={out}", *extra]))


# ---- which folders a run may use ---------------------------------------------------------------------------------
def test_overwrite_refuses_a_hydra_folder_whose_config_has_method_data_and_model(tmp_path):
    files = plant(tmp_path, HYDRA)
    with pytest.raises(ConfigError) as err:
        rundir.check_reuse(tmp_path, resume=False, overwrite=True, config=config_for(tmp_path, "overwrite=true"))
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    assert intact(tmp_path, files)


def test_overwrite_refuses_a_run_of_an_older_tcl_hf_without_the_marker_saying_what_to_do(tmp_path):
    # What tcl_hf wrote before runs carried a marker: a real tcl_hf config.yaml, nothing else to prove it.
    save_config(load_config(None, [*TINY, f"output_dir={tmp_path}"]), tmp_path / rundir.CONFIG_FILE)
    files = plant(tmp_path, {"summary.json": "{}", "plots/mine.txt": "mine"})
    with pytest.raises(ConfigError) as err:
        rundir.check_reuse(tmp_path, resume=False, overwrite=True, config=config_for(tmp_path, "overwrite=true"))
    message = str(err.value)
    assert "\n" not in message and "overwrite" in message and "by hand" in message and "output_dir" in message
    assert intact(tmp_path, files)


@pytest.mark.parametrize("flags", [{"resume": False, "overwrite": False}, {"resume": False, "overwrite": True},
                                   {"resume": True, "overwrite": False}])
def test_a_non_empty_folder_that_is_not_a_run_is_refused_naming_what_is_there(tmp_path, flags):
    files = plant(tmp_path, {"thesis.tex": "chapter 1", "data/train.csv": "a,b\n"})
    with pytest.raises(ConfigError) as err:
        rundir.check_reuse(tmp_path, config=config_for(tmp_path), **flags)
    message = str(err.value)
    assert "\n" not in message and "thesis.tex" in message and "empty" in message
    assert intact(tmp_path, files)


def test_a_refused_folder_gets_no_lock_file(tmp_path):
    from tcl_hf.trainer import Trainer

    files = plant(tmp_path, {"notes.txt": "mine"})
    with pytest.raises(ConfigError, match="notes.txt"):
        Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", "overwrite=true"]))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"] and intact(tmp_path, files)


@pytest.mark.parametrize("where", ["/", "home", "cwd", "parent_of_cwd", "root_through_a_link"])
def test_output_dir_at_the_root_home_or_current_folder_is_refused_in_one_line(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "project").mkdir()
    (tmp_path / "to_root").symlink_to("/")
    value = {"/": "/", "home": str(Path.home()), "cwd": ".", "parent_of_cwd": str(tmp_path),
             "root_through_a_link": "to_root"}[where]
    if where == "parent_of_cwd":
        monkeypatch.chdir(tmp_path / "project")
    with pytest.raises(ConfigError) as err:
        load_config(None, [*TINY, f"output_dir={value}"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("output_dir:") and "name a folder" in message


# ---- symbolic links: never followed --------------------------------------------------------------------------------
def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK_FILE).symlink_to(target)
    with pytest.raises(TCLError) as err:
        rundir.RunLock(run).acquire()
    assert "\n" not in str(err.value) and "symbolic link" in str(err.value)
    assert target.read_text() == "precious"


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl", "summary.json"])
def test_run_files_that_are_symlinks_are_refused_and_their_targets_kept(tmp_path, name):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(target)
    with pytest.raises(TCLError) as err:
        if name == "config.yaml":
            save_config(load_config(None, [*TINY, f"output_dir={run}"]), run / name)
        elif name == "metrics.jsonl":
            rundir.append_metrics(run, {"epoch": 1})
        else:
            rundir.atomic_write_text(run / name, "{}\n")
    assert "\n" not in str(err.value) and "symbolic link" in str(err.value) and name in str(err.value)
    assert target.read_text() == "precious" and (run / name).is_symlink()


def test_an_atomic_write_never_writes_through_a_planted_temporary_name(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".summary.json.tmp").symlink_to(target)  # the name the write goes to before its rename
    rundir.atomic_write_text(run / "summary.json", "{}\n")
    assert target.read_text() == "precious" and (run / "summary.json").read_text() == "{}\n"


# ---- overwrite removes what the run wrote, file by file -----------------------------------------------------------
@pytest.mark.slow
def test_overwrite_removes_only_what_the_earlier_run_wrote(tmp_path, fresh_accelerate):
    from tcl_hf.job import run_job
    from tcl_hf.trainer import Trainer

    run_job(load_config(None, [*TINY, f"output_dir={tmp_path}", "train.batch_size=8"]))
    assert [p.name for p in rundir.checkpoint_dirs(tmp_path)] == ["step_00000006"]
    written = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "hub").rglob("*"))
    mine = plant(tmp_path, {"checkpoints/notes.txt": "mine", "plots/annotated.png": "mine", "hub/extra.md": "mine",
                            "notes.txt": "mine"})
    Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", "overwrite=true", "seed=3"])).train()
    assert intact(tmp_path, mine)
    # The earlier run's checkpoints, its Hub folder, plots, summary and report are gone; the new run's are there.
    assert [p.name for p in rundir.checkpoint_dirs(tmp_path)] == ["step_00000003"]
    assert written and sorted(os.listdir(tmp_path / "hub")) == ["extra.md"]
    assert sorted(os.listdir(tmp_path / "plots")) == ["annotated.png"]
    assert not (tmp_path / rundir.LABEL_ISSUES_FILE).exists()
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path)] == [1]
    assert (tmp_path / rundir.RUN_MARKER_FILE).is_file()
