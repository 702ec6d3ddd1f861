"""The folder's rules: one run per folder unless told otherwise, a resume must be the same run, files
appear whole (atomic writes, ``metrics.jsonl`` one whole line at a time)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..config import flatten, read_recipe
from ..errors import ConfigError, TCLError
from .names import CONFIG_FILE, METRICS_FILE, RUN_OUTPUTS

# Keys a resumed run may change without becoming a different run.
# Settings that never change what a run computes (with the prefixes below): a finished run stays comparable.
# init.accept_failed only lets a TCL+ run start; a run saved before the key existed resumes as the same run.
OUTCOME_NEUTRAL = ("output_dir", "train.resume", "data.num_workers", "overwrite", "train.eval_batch_size",
                   "train.checkpoints_to_keep", "init.accept_failed")
# A resume may also lengthen the schedule.
RESUMABLE_CHANGES = (*OUTCOME_NEUTRAL, "train.epochs", "train.max_steps")

RESUMABLE_PREFIXES = ("log.", "hub.")

# ---- the folder ------------------------------------------------------------------------------------
def check_writable(output_dir: Path) -> None:
    """Create the folder and write a probe file, so an unusable path fails before any work."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write to {str(output_dir)!r} ({exc.strerror or exc})") from None

def existing_outputs(output_dir: Path) -> list[str]:
    return [name for name in RUN_OUTPUTS if (output_dir / name).exists()]

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

def check_reuse(output_dir: Path, resume: bool, overwrite: bool, config: dict) -> None:
    """Refuse, before any work, to mix two runs in one folder; nothing is removed here.

    Resuming needs the same run; replacing (overwrite) needs a folder that holds a tcl_hf run.
    """
    check_writable(output_dir)
    found = existing_outputs(output_dir)
    if resume and (output_dir / CONFIG_FILE).is_file():
        saved = read_saved_config(output_dir, "train.resume")
        diff = run_differences(saved, config)
        if diff:
            shown = ", ".join(f"{k}={flatten(saved).get(k)!r}->{flatten(config).get(k)!r}" for k in diff[:4])
            raise ConfigError(f"train.resume: {output_dir} holds a run with other settings ({shown}); "
                              f"resume with the same recipe and keys, or choose another output_dir")
        return
    if not found or resume:
        return
    if not overwrite:
        raise ConfigError(f"output_dir: {output_dir} already holds a run ({', '.join(found)}); add train.resume=true "
                          f"to continue it, overwrite=true to replace it, or pick another output_dir")
    if not (output_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"overwrite: {output_dir} holds {', '.join(found)} but no tcl_hf run ({CONFIG_FILE} is "
                          f"missing); refusing to delete what another tool wrote; choose another output_dir")
    read_saved_config(output_dir, "overwrite")

def clear_previous_outputs(output_dir: Path) -> None:
    """overwrite=true: remove the previous run's outputs (only those), once the new run is ready to train."""
    for name in existing_outputs(output_dir):
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

def atomic_write_text(path: Path, text: str) -> None:
    """Write beside, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

# ---- metrics.jsonl ---------------------------------------------------------------------------------
def append_metrics(output_dir: Path, record: dict) -> None:
    """One JSON line per call, written with a single append: a kill leaves whole lines, or a torn last one."""
    fd = os.open(Path(output_dir) / METRICS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)

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

def trim_metrics(output_dir: Path, last_epoch: int) -> None:
    """Keep the records up to the checkpoint a run resumes from (the run died before saving the rest)."""
    path = Path(output_dir) / METRICS_FILE
    if path.exists():
        kept = [r for r in read_metrics(output_dir) if r.get("epoch", 0) <= last_epoch]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
