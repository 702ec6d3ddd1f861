"""The sweep: its table from made-up finished runs (values chosen here, mean ± std worked out by hand), its
refusals, and one real sweep killed mid-run and started again (slow).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tcl_hf import sweep
from tcl_hf.config import load_config, save_config
from tcl_hf.rundir import CONFIG_FILE, LABEL_ISSUES_FILE, METRICS_FILE, SUMMARY_FILE, checkpoint_dirs

REPO = Path(__file__).resolve().parents[1]
TINY = """\
data: {format: digits, limit: 48, image_size: 16}
model: {backbone: preact_resnet_mini, proj_dim: 16}
noise: {type: sym, rate: 0.4}
train: {batch_size: 16, epochs: 2, on_collapse: warn}
optim: {warmup_epochs: 1}
eval: {knn_k: 5}
log: {progress: false}
"""


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")


def recipe(folder: Path, name: str, text: str = TINY) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def finish(out: Path, recipe_path: Path, seed: int, summary: dict, *overrides: str) -> Path:
    """A finished run made up here: the config the sweep would give it, a report and a chosen summary."""
    folder = out / recipe_path.stem / f"seed{seed}"
    folder.mkdir(parents=True)
    save_config(load_config(recipe_path, [*overrides, f"seed={seed}", f"output_dir={folder}"]), folder / CONFIG_FILE)
    (folder / LABEL_ISSUES_FILE).write_text("index,given_label\n")
    (folder / SUMMARY_FILE).write_text(json.dumps(summary))
    return folder


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def table_row(md: str, name: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {name} |"))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---- the table -----------------------------------------------------------------------------------------------
def test_table_of_finished_runs_is_mean_and_sample_std_and_nothing_is_retrained(tmp_path, capsys):
    # cifar10_sym50: a recipe name with a published number (93.9); mine: one without.
    paper = recipe(tmp_path, "cifar10_sym50")
    mine = recipe(tmp_path, "mine")
    out = tmp_path / "sweep"
    # test_acc 0.80/0.90/0.85: mean 0.85, deviations .05/.05/0, std sqrt(.005/2) = 0.05.
    # noise_auc 0.9/0.8/0.7: 0.8 ± 0.1. label_acc 0.5/0.6/0.7: 0.6 ± 0.1.
    for seed, (t, a, l) in enumerate([(0.80, 0.9, 0.5), (0.90, 0.8, 0.6), (0.85, 0.7, 0.7)]):
        finish(out, paper, seed, {"test_acc": t, "noise_auc": a, "label_acc": l})
    # Real data without clean labels: no noise_auc / label_acc (null), one seed: no std.
    for seed, t in enumerate([0.25, 0.75, 0.5]):
        finish(out, mine, seed, {"test_acc": t, "noise_auc": None, "label_acc": None})
    before = digest(out)
    assert sweep.main([str(paper), str(mine), "--out", str(out)]) == 0
    assert digest(out) == {**before, **{k: v for k, v in digest(out).items() if k.startswith("sweep.")}}
    printed = capsys.readouterr().out
    assert printed.count(": finished (") == 6 and "fresh" not in printed
    md = (out / "sweep.md").read_text()
    assert table_row(md, "cifar10_sym50") == "| cifar10_sym50 | 3/3 | 85.00 ± 5.00 | 93.9 | 0.8000 ± 0.1000 | 60.00 ± 10.00 |"
    assert table_row(md, "mine") == "| mine | 3/3 | 50.00 ± 25.00 | — | — | — |"
    rows = (out / "sweep.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(",")))
    assert first["recipe"] == "cifar10_sym50" and first["seeds_done"] == "3"
    assert float(first["test_acc_mean"]) == pytest.approx(0.85) and float(first["test_acc_std"]) == pytest.approx(0.05)
    assert float(first["noise_auc_std"]) == pytest.approx(0.1) and float(first["paper_test_acc"]) == pytest.approx(0.939)
    second = dict(zip(header, rows[2].split(",")))
    assert second["noise_auc_mean"] == "" and float(second["test_acc_std"]) == pytest.approx(0.25)


def test_table_counts_only_finished_runs_with_the_sweeps_settings(tmp_path):
    path = recipe(tmp_path, "mine")
    out = tmp_path / "sweep"
    finish(out, path, 0, {"test_acc": 0.6, "noise_auc": 0.9, "label_acc": 0.7})
    finish(out, path, 1, {"test_acc": 0.2, "noise_auc": 0.1, "label_acc": 0.1}, "noise.rate=0.2")  # other settings
    half = finish(out, path, 2, {"test_acc": 0.2, "noise_auc": 0.1, "label_acc": 0.1})
    (half / LABEL_ISSUES_FILE).unlink()  # stopped before the report: to be resumed, not counted
    runs = sweep.plan([path], [0, 1, 2], out, [])
    assert [sweep.run_state(run.folder) for run in runs] == [sweep.FINISHED, sweep.FINISHED, sweep.HALF_FINISHED]
    md = sweep.markdown(sweep.aggregate(runs))
    assert table_row(md, "mine") == "| mine | 1/3 | 60.00 | — | 0.9000 | 70.00 |"


def test_table_marks_failed_seeds_and_keeps_them_in_the_mean(tmp_path):
    path = recipe(tmp_path, "mine")
    out = tmp_path / "sweep"
    verdicts = ["ok", "collapsed at epoch 3", "never left warm-up"]
    for seed, (t, verdict) in enumerate(zip([0.9, 0.1, 0.5], verdicts)):
        finish(out, path, seed, {"test_acc": t, "noise_auc": None, "label_acc": None, "verdict": verdict})
    finish(out, recipe(tmp_path, "fine"), 0, {"test_acc": 0.5, "verdict": "ok"})
    runs = sweep.plan([path, tmp_path / "fine.yaml"], [0, 1, 2], out, [])
    rows = sweep.aggregate(runs)
    md = sweep.markdown(rows)
    assert table_row(md, "mine") == "| mine | 3/3 (2 failed) | 50.00 ± 40.00 | — | — | — |"
    assert table_row(md, "fine") == "| fine | 1/3 | 50.00 | — | — | — |"
    assert "mine: seed 1 collapsed at epoch 3; seed 2 never left warm-up" in md
    sweep.write_tables(out, rows)
    import csv

    table = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["failed_seeds"] for r in table] == ["seed 1 collapsed at epoch 3; seed 2 never left warm-up", ""]


# ---- refusals ------------------------------------------------------------------------------------------------
# A resume may extend train.epochs, but a finished run of another length is not the run asked for.
@pytest.mark.parametrize("setting", ["noise.rate=0.2", "train.epochs=7"])
def test_a_finished_run_with_other_settings_stops_the_sweep_in_one_line(tmp_path, capsys, setting):
    path = recipe(tmp_path, "mine")
    out = tmp_path / "sweep"
    finish(out, path, 0, {"test_acc": 0.5})
    assert sweep.main([str(path), "--seeds", "0", "--out", str(out)]) == 0  # the table of the sweep as it was
    capsys.readouterr()
    before = digest(out)
    assert sweep.main([str(path), "--seeds", "0", "--out", str(out), setting]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "mine/seed0" in line and "other settings" in line and setting.split("=")[0] in line
    assert digest(out) == before  # the run, and sweep.md and sweep.csv: a refused sweep changes nothing
    assert table_row((out / "sweep.md").read_text(), "mine").startswith("| mine | 1/1 |")


@pytest.mark.parametrize("args, said", [
    (["{recipe}", "seed=3"], "the sweep sets seed"),
    (["{recipe}", "output_dir=x"], "the sweep sets"),
    (["{recipe}", "hub.repo_id=me/x"], "the sweep does not push"),
    (["{recipe}", "train.epochs=zero"], "train.epochs"),
    (["{missing}"], "nope.yaml"),
    (["{recipe}", "{recipe}"], "two recipes named mine.yaml"),
    (["noise.rate=0.2"], "no recipe given"),
])
def test_bad_input_is_one_line_before_any_run(tmp_path, capsys, args, said):
    path = recipe(tmp_path, "mine")
    out = tmp_path / "sweep"
    argv = [a.format(recipe=path, missing=tmp_path / "nope.yaml") for a in args]
    assert sweep.main([*argv, "--out", str(out)]) == 2
    assert said in one_error_line(capsys.readouterr().err)
    assert not (out / "mine").exists()


@pytest.mark.parametrize("seeds", ["0,0", "a", "-1", ""])
def test_bad_seeds_are_refused(tmp_path, capsys, seeds):
    with pytest.raises(SystemExit) as info:
        sweep.main([str(recipe(tmp_path, "mine")), "--seeds", seeds])
    assert info.value.code == 2 and "distinct seeds" in capsys.readouterr().err


def test_each_runs_configuration_is_loaded_once(tmp_path, monkeypatch):
    import tcl_hf.config

    path = recipe(tmp_path, "mine")
    out = tmp_path / "sweep"
    for seed in (0, 1, 2):
        finish(out, path, seed, {"test_acc": 0.5, "noise_auc": 0.5, "label_acc": 0.5})
    loaded = []
    real = tcl_hf.config.load_config

    def counting(recipe_path, overrides=()):
        loaded.append(Path(recipe_path))
        return real(recipe_path, overrides)
    monkeypatch.setattr(tcl_hf.config, "load_config", counting)
    # Planned, checked against the finished folders and tabulated: three runs, three loads.
    assert sweep.main([str(path), "--out", str(out)]) == 0
    assert loaded == [path] * 3
    assert table_row((out / "sweep.md").read_text(), "mine").startswith("| mine | 3/3 | 50.00 ± 0.00 |")


# ---- a real sweep, killed and started again -------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_sweep_skips_the_finished_run_and_resumes_the_killed_one(tmp_path, capsys, fresh_accelerate):
    path = recipe(tmp_path, "tiny")
    out = tmp_path / "sweep"
    done = finish(out, path, 0, {"test_acc": 0.5, "noise_auc": 0.75, "label_acc": 0.25})
    before = digest(done)
    killed = out / "tiny" / "seed1"
    argv = [str(path), "--seeds", "0,1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "tcl_hf.sweep", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not checkpoint_dirs(killed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to save or clean up
    printed = proc.communicate(timeout=60)[0]
    assert "tiny seed 0: finished" in printed and "tiny seed 1: fresh" in printed
    assert not (killed / SUMMARY_FILE).exists(), "the kill came after the run had finished"
    assert len(checkpoint_dirs(killed)) == 1

    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert "tiny seed 0: finished" in printed and "tiny seed 1: half-finished" in printed
    assert "resumed from" in printed and "(epoch 1, step" in printed  # from the checkpoint the kill left
    assert digest(done) == before
    epochs = [json.loads(line)["epoch"] for line in (killed / METRICS_FILE).read_text().splitlines()]
    assert epochs == [1, 2]
    summaries = [json.loads((out / "tiny" / f"seed{s}" / SUMMARY_FILE).read_text()) for s in (0, 1)]
    assert summaries[1]["epochs_completed"] == 2 and (killed / LABEL_ISSUES_FILE).is_file()
    row = table_row((out / "sweep.md").read_text(), "tiny")
    cells = [c.strip() for c in row.strip("|").split("|")]
    for cell, key, scale, digits in ((cells[2], "test_acc", 100, 2), (cells[4], "noise_auc", 1, 4),
                                     (cells[5], "label_acc", 100, 2)):
        values = np.array([s[key] for s in summaries]) * scale
        assert cell == f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
    # The tiny run's verdict is what it is (2 epochs of 48 images may well collapse): the cell marks it exactly.
    failed = [s["verdict"] for s in summaries if s.get("verdict", "ok") != "ok"]
    assert cells[1] == "2/2" + (f" ({len(failed)} failed)" if failed else "")
