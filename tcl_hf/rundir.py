"""The run folder (``output_dir``): what a run leaves there, and the rules that keep it safe.

A new run never writes into a folder that holds another run's outputs unless told to; a resumed
run must be the same run; checkpoints appear atomically (written aside, then renamed).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .config import flatten, read_recipe
from .errors import ConfigError

CHECKPOINT_PREFIX = "step_"
# What a run writes; `overwrite=true` removes exactly these, nothing else the folder holds.
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "summary.json", "label_issues.csv", "checkpoints", "hub", "plots")
# Keys a resumed run may change without becoming a different run.
RESUMABLE_CHANGES = ("output_dir", "train.resume", "train.epochs", "train.max_steps", "data.num_workers", "overwrite",
                     "train.eval_batch_size", "train.checkpoints_to_keep")
RESUMABLE_PREFIXES = ("log.", "hub.")


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (renamed into place), oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def existing_outputs(output_dir: Path) -> list[str]:
    return [name for name in RUN_OUTPUTS if (output_dir / name).exists()]


def check_writable(output_dir: Path) -> None:
    """Create the folder and write a probe file, so an unusable path fails before any work."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write to {str(output_dir)!r} ({exc.strerror or exc})") from None


def run_differences(saved: dict, current: dict) -> list[str]:
    """Keys (dotted) whose values differ between two config dicts, ignoring those a resume may change."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES
            and not k.startswith(RESUMABLE_PREFIXES)]


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool, config: dict, is_main: bool) -> None:
    """Refuse to mix runs in one folder; with overwrite=true clear the previous run's outputs first."""
    check_writable(output_dir)
    found = existing_outputs(output_dir)
    if resume and (output_dir / "config.yaml").is_file():
        saved = _saved_config(output_dir / "config.yaml")
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
    if is_main:
        for name in found:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _saved_config(path: Path) -> dict:
    """The configuration a run saved, read like a recipe: a damaged file is one line, not a traceback."""
    try:
        return read_recipe(path)
    except ConfigError as exc:
        raise ConfigError(f"train.resume: the saved configuration cannot be used ({exc}); restore it, or start "
                          f"afresh with overwrite=true instead of train.resume=true") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
