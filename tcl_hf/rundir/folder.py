"""The folder's rules: a run writes only into a new or empty folder or a tcl_hf run's, one run per folder unless
told otherwise (and then only the files the earlier run wrote are removed), a resume must be the same run,
``metrics.jsonl`` grows one whole line at a time."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..config import flatten, read_recipe
from ..errors import ConfigError, TCLError
from ..floats import tidy
from .checkpoints import checkpoint_entries
from .files import append_line, atomic_write_text
from .marker import owned_file, read_marker
from .names import BOOKKEEPING, CHECKPOINTS_DIR, CONFIG_FILE, METRICS_FILE, RUN_MARKER_FILE, RUN_OUTPUTS

# Keys a resumed run may change without becoming a different run.
# Settings that never change what a run computes (with the prefixes below): a finished run stays comparable.
# init.accept_failed only lets a TCL+ run start; a run saved before the key existed resumes as the same run.
OUTCOME_NEUTRAL = ("output_dir", "train.resume", "data.num_workers", "overwrite", "train.eval_batch_size",
                   "train.checkpoints_to_keep", "init.accept_failed")
# A resume may also lengthen the schedule.
RESUMABLE_CHANGES = (*OUTCOME_NEUTRAL, "train.epochs", "train.max_steps")

RESUMABLE_PREFIXES = ("log.", "hub.")

# The probe file check_writable makes and removes (another process of the same launch may be holding one).
WRITE_PROBE_PREFIX = ".write-test-"

# ---- the folder ------------------------------------------------------------------------------------
def check_writable(output_dir: Path) -> None:
    """Create the folder and write a probe file, so an unusable path fails before any work."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=WRITE_PROBE_PREFIX):
            pass
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write to {str(output_dir)!r} ({exc.strerror or exc})") from None

def existing_outputs(output_dir: Path) -> list[str]:
    return [name for name in RUN_OUTPUTS if os.path.lexists(output_dir / name)]

def _contents(output_dir: Path) -> list[str]:
    """What the folder holds besides tcl_hf's own lock, marker and write probes."""
    return sorted(name for name in os.listdir(output_dir)
                  if name not in BOOKKEEPING and not name.startswith(WRITE_PROBE_PREFIX))

def _shown(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")

def read_saved_config(output_dir: Path, key: str) -> dict:
    """The resolved configuration a run saved, or a one-line error (under ``key``) saying why it cannot be used."""
    path = output_dir / CONFIG_FILE
    try:
        tree = read_recipe(path)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {path} cannot be used as a tcl_hf run's configuration ({exc}); restore it, "
                          f"move the folder aside or choose another output_dir") from None
    if not {"method", "data", "model"} <= set(tree):
        raise ConfigError(f"{key}: {path} is not a tcl_hf run's configuration (no method, data, model keys); "
                          f"move the folder aside or choose another output_dir")
    return tree

def run_differences(saved: dict, current: dict, ignored: tuple[str, ...] = RESUMABLE_CHANGES) -> list[str]:
    """Keys (dotted) whose values differ between two config dicts, leaving out ``ignored`` (by default those a
    resume may change) and the logging and Hub keys."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and k not in ignored and not k.startswith(RESUMABLE_PREFIXES)]

def check_run_folder(output_dir: Path) -> None:
    """Refuse a folder that is neither new, empty nor a tcl_hf run (its marker, or a config.yaml a resume may
    check), naming some of what it holds; the folder is created when missing."""
    check_writable(output_dir)
    contents = _contents(output_dir)
    if contents and not os.path.lexists(output_dir / RUN_MARKER_FILE) and not (output_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"output_dir: {output_dir} is not empty ({_shown(contents)}) and holds no tcl_hf run; "
                          f"tcl_hf writes only into a new or empty folder or its own run's; choose another output_dir")

def check_reuse(output_dir: Path, resume: bool, overwrite: bool, config: dict) -> None:
    """Refuse, before any work, to write into a folder that is neither empty nor a tcl_hf run, or to mix two runs
    in one folder; nothing is removed here.

    A tcl_hf run is a folder with tcl_hf's marker, or (for a resume only) one whose saved config is the same run's:
    a run made before markers existed, or another tool's folder with a config.yaml, is never replaced.
    """
    check_run_folder(output_dir)
    marked = read_marker(output_dir) is not None
    saved = (output_dir / CONFIG_FILE).is_file()
    if resume:
        if saved:
            _check_same_run(output_dir, config)
        return
    found = existing_outputs(output_dir)
    if not found:
        return
    if not marked:
        raise ConfigError(f"{'overwrite' if overwrite else 'output_dir'}: {output_dir} holds {_shown(found)} without "
                          f"tcl_hf's {RUN_MARKER_FILE} (a run of an older tcl_hf, or another tool's files), so tcl_hf "
                          f"cannot tell which files are its own and replaces nothing; continue it with "
                          f"train.resume=true, delete its outputs by hand, or choose another output_dir")
    if not overwrite:
        raise ConfigError(f"output_dir: {output_dir} already holds a run ({_shown(found)}); add train.resume=true "
                          f"to continue it, overwrite=true to replace it, or pick another output_dir")

def _check_same_run(output_dir: Path, config: dict) -> None:
    saved = read_saved_config(output_dir, "train.resume")
    diff = run_differences(saved, config)
    if diff:
        shown = ", ".join(f"{k}={flatten(saved).get(k)!r}->{flatten(config).get(k)!r}" for k in diff[:4])
        raise ConfigError(f"train.resume: {output_dir} holds a run with other settings ({shown}); "
                          f"resume with the same recipe and keys, or choose another output_dir")

def clear_previous_outputs(output_dir: Path) -> None:
    """overwrite=true, once the new run is ready to train: remove the files the marker lists and the checkpoints,
    one by one; what else the output folders hold stays, and a folder goes only when that left it empty."""
    marker = read_marker(output_dir)
    if marker is None:
        return
    emptied = set()
    for name in marker["written"]:
        path = owned_file(output_dir, name)
        if path is not None:
            path.unlink()
            emptied.update(p for p in path.parents if p != output_dir and output_dir in p.parents)
    checkpoints = output_dir / CHECKPOINTS_DIR
    for path in checkpoint_entries(output_dir):
        shutil.rmtree(path)
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        emptied.add(checkpoints)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: the user's files are in it
            folder.rmdir()

# ---- metrics.jsonl ---------------------------------------------------------------------------------
# Marks a record of an epoch trained as CE after train.on_collapse=fallback went back (tcl_hf/fallback.py).
FELL_BACK_KEY = "fell_back"

def append_metrics(output_dir: Path, record: dict) -> None:
    """One JSON line per call, written with a single append: a kill leaves whole lines, or a torn last one."""
    append_line(Path(output_dir) / METRICS_FILE, json.dumps(tidy(record)))

def read_metrics(output_dir: Path) -> list[dict]:
    """The per-epoch records; a torn last line (a kill during the write) is left out, damage elsewhere
    is an error naming the line."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise TCLError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
    return records

def trajectory_records(records: list[dict], last_epoch: int, collapsed_at: int | None = None) -> list[dict]:
    """The records behind a checkpoint of epoch ``last_epoch``: those up to it; for a run that fell back to CE after
    TCL collapsed at epoch ``collapsed_at`` (train.on_collapse=fallback), TCL's up to the collapse and then the
    fallback's (marked ``fell_back``; their epochs repeat TCL's) up to ``last_epoch``."""
    if collapsed_at is None:
        return [r for r in records if not r.get(FELL_BACK_KEY) and r.get("epoch", 0) <= last_epoch]
    return [r for r in records if r.get("epoch", 0) <= (last_epoch if r.get(FELL_BACK_KEY) else collapsed_at)]

def trim_metrics(output_dir: Path, last_epoch: int, collapsed_at: int | None = None) -> None:
    """Keep the records up to the checkpoint a run resumes from (the run died before saving the rest); see
    ``trajectory_records``."""
    path = Path(output_dir) / METRICS_FILE
    if path.exists():
        kept = trajectory_records(read_metrics(output_dir), last_epoch, collapsed_at)
        atomic_write_text(path, "".join(json.dumps(tidy(r)) + "\n" for r in kept))
