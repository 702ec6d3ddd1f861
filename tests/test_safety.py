"""Faults and bad input: each gets one clear line (or is handled), and no earlier output is lost."""
import json
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from fixtures import tiny_digits
from hypothesis import given, settings
from hypothesis import strategies as st

from tcl_hf.config import flat_keys, load_config
from tcl_hf.errors import ConfigError, DataError, TCLError
from tcl_hf.rundir import checkpoint_dirs
from tcl_hf.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
TINY = tiny_digits("model.proj_dim=32", "train.epochs=1", "optim.warmup_epochs=1")


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    summary = Trainer(load_config(None, [*TINY, f"output_dir={out}"])).train()
    return out, summary


@pytest.mark.slow
def test_second_run_into_finished_folder_is_refused_and_nothing_lost(finished_run):
    out, _ = finished_run
    before = (out / "summary.json").read_bytes()
    proc = _cli(*TINY, f"output_dir={out}", "seed=7")
    line = _one_line_error(proc, str(out), "train.resume=true")
    assert "overwrite=true" in line
    assert (out / "summary.json").read_bytes() == before
    assert checkpoint_dirs(out)


@pytest.mark.slow
def test_overwrite_replaces_previous_outputs(tmp_path):
    Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", "train.max_steps=1"])).train()
    (tmp_path / "notes.txt").write_text("mine")
    summary = Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", "overwrite=true", "seed=5"])).train()
    assert summary["steps"] == 6
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000006"]
    # Files the run did not write are left alone.
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unwritable_output_dir_is_refused_before_work():
    with pytest.raises(ConfigError, match="output_dir"):
        Trainer(load_config(None, [*TINY, "output_dir=/proc/x"]))


@pytest.mark.slow
def test_huge_lr_stops_with_one_line(tmp_path):
    proc = _cli(*TINY, f"output_dir={tmp_path}", "optim.lr=1e6")  # the largest lr allowed
    _one_line_error(proc, "diverged", "step", "loss")
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("every, where", [(1, "at step 9"), (4, "between steps 9 and 12")])
def test_divergence_names_the_term_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, every, where):
    import tcl_hf.methods as methods

    real = methods.tcl_loss

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        if trainer.state.step >= 8:  # epoch 2 of 6 steps each
            terms["loss_align"] = terms["loss_align"] * float("nan")
            terms["loss"] = terms["loss"] + terms["loss_align"]
        return terms

    monkeypatch.setattr(methods, "tcl_loss", poisoned)
    trainer = Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", "train.epochs=2", f"log.every={every}"]))
    with pytest.raises(TCLError) as err:
        trainer.train()
    message = str(err.value)
    # The loss terms are read off the device every log.every steps: the line names the steps since the last read.
    assert "loss_align" in message and where in message and "step_00000006" in message
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000006"]


@pytest.mark.slow
def test_label_file_of_wrong_length_is_refused_naming_length(tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(7) % 10)
    proc = _cli(*TINY, f"output_dir={tmp_path / 'run'}", "noise.type=file", f"noise.file={labels}")
    _one_line_error(proc, "noise.file", "7")


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_says_how_to_resume(tmp_path):
    args = [*TINY, f"output_dir={tmp_path}", "train.epochs=20", "data.limit=320"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not checkpoint_dirs(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "train.resume=true" in err and "Traceback" not in err
    newest = checkpoint_dirs(tmp_path)[-1]
    assert str(newest) in err
    resumed = _cli(*args[:-2], "train.epochs=2", "data.limit=320", "train.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["epochs_completed"] == 2


# ---- the config parser, swept and fuzzed ---------------------------------------------------------
def _wrong_value(tp):
    """A value of the wrong type for a key of type `tp`."""
    origin = typing.get_origin(tp)
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is typing.Union:
        return _wrong_value(inner[0])
    if origin is typing.Literal:
        return "no_such_choice"
    if origin is list:
        return "[a, b]"
    return {bool: "maybe", int: "1.5x", float: "fast", str: "[1, 2]"}[tp]


@pytest.mark.parametrize("key", sorted(flat_keys()))
def test_every_key_rejects_wrong_type_with_its_name(key):
    tp = flat_keys()[key]
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={_wrong_value(tp)}"])
    message = str(err.value)
    assert key in message and "\n" not in message


@pytest.mark.parametrize("override", ["train.epochs=0", "train.batch_size=-1", "noise.rate=-0.1", "noise.rate=1.5",
                                      "optim.lr=0", "optim.momentum=1.0", "model.dropout=1", "tcl.scale1=2",
                                      "seed=-1", "data.limit=0", "data.mean=[0.5,0.5]", "eval.knn_t=0",
                                      "aug.strong_scale_min=0"])
def test_out_of_range_values_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])


_values = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.none(), st.text(max_size=12), st.lists(st.floats(-2, 2), max_size=4))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(flat_keys()) + ["nope", "train.nope", "data"]), value=_values)
def test_parser_fuzz_gives_config_or_one_line_error(key, value):
    if key == "model.backbone":
        value = str(value)
    text = f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
    try:
        load_config(None, [text])
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)


# ---- datasets with problems ------------------------------------------------------------------------
def _parquet_dataset(tmp_path: Path, train_labels, test_labels, images=None, num_classes=None):
    import datasets
    from PIL import Image

    names = [f"c{k}" for k in range(num_classes or (max(train_labels + test_labels, default=0) + 1))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    root = tmp_path / "ds" / "data"
    root.mkdir(parents=True)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        imgs = images or [Image.new("RGB", (8, 8), (i * 9 % 255, 0, 0)) for i in range(len(labels))]
        ds = datasets.Dataset.from_dict({"image": imgs[:len(labels)], "label": labels}, features=features)
        ds.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    return tmp_path / "ds"


@pytest.mark.slow
def test_dataset_with_one_class_is_refused(tmp_path):
    path = _parquet_dataset(tmp_path, [0] * 6, [0] * 3, num_classes=1)
    with pytest.raises(DataError, match="at least 2"):
        Trainer(load_config(None, [*TINY, "data.format=hf", f"data.path={path}", f"output_dir={tmp_path / 'r'}"]))


@pytest.mark.slow
def test_empty_split_is_refused(tmp_path):
    path = _parquet_dataset(tmp_path, [0, 1, 0, 1], [], num_classes=2)
    with pytest.raises(TCLError, match="test"):
        Trainer(load_config(None, [*TINY, "data.format=hf", f"data.path={path}", f"output_dir={tmp_path / 'r'}"]))


def test_odd_sizes_and_modes_are_converted(tmp_path):
    from PIL import Image

    from tcl_hf.data.contract import InputContract
    from tcl_hf.data import load_data

    images = [Image.new("L", (5, 9), 40), Image.new("RGBA", (30, 12), (1, 2, 3, 4)),
              Image.new("P", (16, 16), 3), Image.new("CMYK", (7, 7), (0, 0, 0, 0)), Image.new("1", (20, 20), 1),
              Image.new("I;16", (11, 13), 300)]
    path = _parquet_dataset(tmp_path, [0, 1, 0, 1, 0, 1], [0, 1], images=images)
    cfg = load_config(None, ["data.format=hf", f"data.path={path}"])
    bundle = load_data(cfg.data, InputContract(16, 16, 1.0, "bilinear"))
    assert tuple(bundle.train.images.shape) == (6, 3, 16, 16)
    assert bundle.train.images.dtype.is_floating_point is False


@pytest.mark.slow
def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    from accelerate import Accelerator

    real = Accelerator.save_state
    calls = []

    def save_state_once_then_full(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            (Path(output_dir) / "partial.bin").parent.mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "partial.bin").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state_once_then_full)
    with pytest.raises(TCLError) as err:
        Trainer(load_config(None, [*TINY, f"output_dir={tmp_path}", "train.epochs=3"])).train()
    message = str(err.value)
    assert "No space left on device" in message and "step_00000006" in message and "\n" not in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000006"]


# ---- bad input through the command line: one line, exit 2, no traceback ---------------------------------
def _crafted_label_file(tmp_path):
    import torch
    from fixtures import WritesAFile

    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": np.zeros(96, dtype=np.int64), "aggre_label": WritesAFile(tmp_path / "marker")}, path)
    return [*TINY, "noise.type=cifarn", f"noise.file={path}", "noise.label_set=aggre"], [str(path), "noise.file"]


def _recipe_of_bytes(content: bytes):
    def build(tmp_path):
        recipe = tmp_path / "recipe.yaml"
        recipe.write_bytes(content)
        return [str(recipe), *TINY], [str(recipe)]
    return build


def _override(*overrides: str, key: str):
    return lambda tmp_path: ([*TINY, *overrides], [key])


def _webvision(tmp_path, **kwargs):
    from fixtures import make_webvision

    layout = make_webvision(tmp_path / "wv", **kwargs)
    args = [*TINY, "data.format=webvision", f"data.root={layout.root}", "data.num_classes=4", "data.limit=null",
            "train.batch_size=4", "noise.type=none"]
    return layout, args


def _huge_label(tmp_path):
    from fixtures import write_lines

    layout, args = _webvision(tmp_path, imagenet=None)
    write_lines(layout.files["val"], ["a.jpg 0", "b.jpg 99999999999999999999999", "c.jpg 1"])
    return args, ["val_filelist.txt line 2", "99999999999999999999999", "allowed 0..999"]


def _superscript_class_folder(tmp_path):
    layout, args = _webvision(tmp_path)
    (layout.files["imagenet"] / "²").mkdir()
    return [*args, f"data.imagenet_val={layout.files['imagenet']}"], ["data.imagenet_val", "'²'"]


def _resume_with_saved_config(content: bytes):
    def build(tmp_path):
        out = tmp_path / "run"
        out.mkdir()
        (out / "config.yaml").write_bytes(content)
        return [*TINY, f"output_dir={out}", "train.resume=true"], ["train.resume", "config.yaml"]
    return build


PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de")
CLI_CASES = {
    "crafted_label_file": _crafted_label_file,
    "png_as_recipe": _recipe_of_bytes(PNG + bytes(range(256))),
    "random_bytes_as_recipe": _recipe_of_bytes(np.random.default_rng(0).integers(0, 256, 512, np.uint8).tobytes()),
    "control_characters_in_recipe": _recipe_of_bytes(b"seed: 0\n\x00\x01\x02\n"),
    "negative_noise_seed": _override("noise.seed=-1", key="noise.seed"),
    "seed_beyond_2_32": _override("seed=73786976294838206464", key="seed"),
    "lr_overflowing_float32": _override("optim.lr=1e300", key="optim.lr"),
    "temperature_underflowing": _override("tcl.temperature=1e-300", key="tcl.temperature"),
    "image_size_20000": _override("data.image_size=20000", key="data.image_size"),
    "batch_of_one_for_batchnorm": _override("method=ce", "train.batch_size=1", key="train.batch_size"),
    "repo_id_with_spaces": _override("hub.repo_id=me/my model", key="hub.repo_id"),
    "repo_id_without_namespace": _override("hub.repo_id=my-model", key="hub.repo_id"),
    "label_beyond_int64": _huge_label,
    "superscript_class_folder": _superscript_class_folder,
    "binary_config_on_resume": _resume_with_saved_config(PNG),
    "invalid_yaml_config_on_resume": _resume_with_saved_config(b"seed: [0\n"),
    "non_mapping_config_on_resume": _resume_with_saved_config(b"- seed\n- 0\n"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_input_gives_one_line_and_exit_2(tmp_path, case, capsys, fresh_accelerate):
    from tcl_hf.cli import main

    args, needles = CLI_CASES[case](tmp_path)
    if not any(a.startswith("output_dir=") for a in args):
        args = [*args, f"output_dir={tmp_path / 'run'}"]
    # The command's own entry, in this process: an exception escaping it fails the test as a traceback would,
    # without a fresh interpreter's 10 s of imports per case (train.py's wrapper: the subprocess tests here).
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    _one_line_error(subprocess.CompletedProcess(args, code, "", err), *needles)
    assert not (tmp_path / "marker").exists()  # the crafted label file ran nothing


@pytest.mark.slow
def test_a_recipe_that_is_a_folder_is_one_line(tmp_path, capsys):
    from tcl_hf.cli import main

    (tmp_path / "recipe.yaml").mkdir()
    assert main([str(tmp_path / "recipe.yaml"), *TINY, f"output_dir={tmp_path / 'run'}"]) == 2
    line = _one_line_error(subprocess.CompletedProcess([], 2, "", capsys.readouterr().err), "recipe.yaml")
    assert "is a folder" in line and "does not exist" not in line


# ---- every command: the machine's errors and Ctrl-C in one line, never a traceback -------------------------------
def _command(name: str, tmp_path: Path):
    """(the command's main, its arguments, the module and function under it that does the work)."""
    from tcl_hf import cli, export, job, repair, sweep

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("data: {format: digits, limit: 48, image_size: 16}\nlog: {progress: false}\n")
    return {"train": (cli.main, [str(recipe), f"output_dir={tmp_path / 'run'}"], job, "run_job"),
            "sweep": (sweep.main, [str(recipe), "--seeds", "0", "--out", str(tmp_path / "sweep")], sweep, "run_all"),
            "export": (export.main, [str(tmp_path)], export, "reexport"),
            "repair": (repair.main, [str(tmp_path)], repair, "repair_run")}[name]


@pytest.mark.parametrize("name", ["train", "sweep", "export", "repair"])
@pytest.mark.parametrize("raised, code, said", [
    (OSError(30, "Read-only file system", "/runs/x/hub"), 2, ["error: Read-only file system", "/runs/x/hub"]),
    (KeyboardInterrupt(), 130, ["interrupted", "continue"]),
])
def test_every_command_turns_the_machines_errors_into_one_line(tmp_path, capsys, monkeypatch, name, raised, code,
                                                               said):
    main, argv, module, function = _command(name, tmp_path)

    def fails(*args, **kwargs):
        raise raised

    monkeypatch.setattr(module, function, fails)
    try:
        got = main(argv)
    except BaseException as exc:  # a KeyboardInterrupt escaping the test would end the whole test session
        pytest.fail(f"{name}: {exc!r} escaped the command")
    err = capsys.readouterr().err
    assert got == code and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in said:
        assert needle in lines[0], lines[0]


# ---- repair and export: a file or a read-only folder where they write ---------------------------------------------
def _made_up_run(run_dir: Path) -> Path:
    """A finished digits run as repair reads it (config.yaml, a report with the run's given labels); no training."""
    from tcl_hf.config import save_config
    from tcl_hf.data.hf import digits_dataset_dict
    from tcl_hf.noise import symmetric_noise
    from tcl_hf.report import label_issues, write_label_issues

    args = ["data.format=digits", "data.limit=40", "noise.type=sym", "noise.rate=0.4", f"output_dir={run_dir}"]
    run_dir.mkdir(parents=True)
    save_config(load_config(None, args), run_dir / "config.yaml")
    truth = np.asarray(digits_dataset_dict()["train"]["label"][:40], dtype=np.int64)
    given = symmetric_noise(truth, 0.4, 10, seed=0)
    write_label_issues(run_dir, label_issues(given, given, np.linspace(0.2, 0.9, 40), truth))
    (run_dir / "summary.json").write_text(json.dumps({"test_acc": 0.5, "verdict": "ok"}))  # a finished, healthy run
    (run_dir / "repaired").mkdir()  # an earlier repair's folder stands in the way of nothing: it must survive
    return run_dir


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_only(monkeypatch, folder: Path) -> None:
    """``folder`` as a read-only mount shows it (as root, chmod stops no write): every call that would create,
    change or remove a path under it fails with EROFS, as the kernel's would."""
    import builtins
    import errno
    import io

    def inside(path) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and \
            Path(os.fsdecode(path)).absolute().is_relative_to(folder)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def guard(real, writes=lambda *args, **kwargs: True, paths=1):
        def call(*args, **kwargs):
            if any(inside(p) for p in args[:paths]) and writes(*args, **kwargs):
                refuse(next(p for p in args[:paths] if inside(p)))
            return real(*args, **kwargs)
        return call

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    monkeypatch.setattr(os, "open", guard(os.open, lambda path, flags, *a, **k: flags & write_flags))
    opener = guard(io.open, lambda path, mode="r", *a, **k: any(c in mode for c in "wax+"))
    monkeypatch.setattr(io, "open", opener)
    monkeypatch.setattr(builtins, "open", opener)
    for name in ("mkdir", "rmdir", "remove", "unlink"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    for name in ("rename", "replace"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), paths=2))


def test_repair_of_a_read_only_run_folder_is_one_line_and_changes_nothing(tmp_path, capsys, monkeypatch):
    from tcl_hf import repair

    run_dir = _made_up_run(tmp_path / "run")
    before = _digest(run_dir)
    _read_only(monkeypatch, run_dir)
    try:
        code = repair.main([str(run_dir)])
    except OSError as exc:
        pytest.fail(f"the read-only folder's error escaped the command: {exc!r}")
    monkeypatch.undo()
    err = capsys.readouterr().err
    _one_line_error(subprocess.CompletedProcess([], code, "", err), "Read-only file system", str(run_dir))
    assert code == 2
    assert _digest(run_dir) == before and (run_dir / "repaired").is_dir()


def test_repair_out_under_a_regular_file_is_one_line(tmp_path, capsys):
    from tcl_hf import repair

    run_dir = _made_up_run(tmp_path / "run")
    (tmp_path / "notes.txt").write_text("mine")
    before = _digest(tmp_path)
    try:
        code = repair.main([str(run_dir), "--out", str(tmp_path / "notes.txt" / "repaired")])
    except OSError as exc:
        pytest.fail(f"the error escaped the command: {exc!r}")
    line = _one_line_error(subprocess.CompletedProcess([], code, "", capsys.readouterr().err), "--out",
                           str(tmp_path / "notes.txt"))
    assert code == 2 and "not a folder" in line
    assert _digest(tmp_path) == before
