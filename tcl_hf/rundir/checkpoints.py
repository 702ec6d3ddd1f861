"""Checkpoints: written aside with a manifest (size and SHA-256 of every file), renamed into place, the
newest kept; a resume loads the newest one that is complete and loads."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ..errors import TCLError
from .names import CHECKPOINTS_DIR, MANIFEST_FILE

CHECKPOINT_PREFIX = "step_"

# A checkpoint moved aside while a newer one of the same step takes its name; a kill between the two
# renames leaves it as the only copy of that step, so it still counts as a checkpoint.
REPLACED_PREFIX = ".replaced-"

# A checkpoint being written, renamed into place once complete.
WRITING_PREFIX = ".tmp-"

# ---- checkpoints -----------------------------------------------------------------------------------
def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"

def _step_of(name: str) -> int | None:
    name = name.removeprefix(REPLACED_PREFIX)
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None

def checkpoint_entries(output_dir: str | Path) -> list[Path]:
    """Every folder under checkpoints/ that a run made: complete, set aside or being written (a run replaces
    these whole as it goes; anything else there is not a run's)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return [path for path in root.iterdir() if path.is_dir() and not path.is_symlink()
            and _step_of(path.name.removeprefix(WRITING_PREFIX)) is not None]

def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders renamed into place, oldest first (a set-aside copy only when its step has no other)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for path in root.iterdir():
        step = _step_of(path.name)
        if step is not None and path.is_dir() and (step not in by_step or not path.name.startswith(REPLACED_PREFIX)):
            by_step[step] = path
    return [by_step[step] for step in sorted(by_step)]

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

def write_manifest(folder: Path) -> None:
    """Size and hash of every file, written last: a checkpoint without it never finished."""
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / MANIFEST_FILE).write_text(json.dumps(files, indent=1) + "\n")

def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be trusted (incomplete, truncated, altered), or None when it is whole."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return "incomplete: no manifest"
    except (ValueError, OSError):
        return "damaged manifest"
    if not isinstance(manifest, dict) or not manifest:
        return "damaged manifest"
    for name, entry in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry.get("bytes"):
            return f"{name} is truncated"
        if _sha256(path) != entry.get("sha256"):
            return f"{name} is damaged"
    return None

def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__

def newest_intact(output_dir: Path) -> Path | None:
    return next((p for p in reversed(checkpoint_dirs(output_dir)) if checkpoint_problem(p) is None), None)

def write_checkpoint(output_dir: Path, step: int, write: Callable[[Path], None], keep: int, is_main: bool,
                     barrier: Callable[[], None], pinned: int | None = None) -> Path:
    """Write a checkpoint aside with ``write(folder)`` (every process), add the manifest, rename it into place,
    and keep the newest ``keep`` and the one of step ``pinned`` (train.on_collapse=fallback's way back). Any error
    while writing gives one line and leaves no temporary folder."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    tmp = root / f"{WRITING_PREFIX}{final.name}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        write(tmp)
        barrier()
        if is_main:
            write_manifest(tmp)
    except Exception as exc:  # OSError, safetensors' and torch's own write errors alike
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = newest_intact(output_dir)
        raise TCLError(f"could not write checkpoint {final} ({_reason(exc)}); the previous one is intact: "
                       f"{kept if kept else 'none yet'}") from None
    if is_main:
        _move_into_place(tmp, final)
        for old in checkpoint_dirs(output_dir)[:-keep]:
            if _step_of(old.name) != pinned:
                shutil.rmtree(old)
    barrier()
    return final

def checkpoint_of_step(output_dir: Path, step: int | None) -> Path | None:
    """The checkpoint folder of ``step`` (None: there is none)."""
    return next((path for path in checkpoint_dirs(output_dir) if _step_of(path.name) == step), None)

def remove_checkpoints_after(output_dir: Path, step: int) -> None:
    """Remove every checkpoint of a step after ``step``: a run that went back to ``step`` left them behind, and a
    resume must not pick them up."""
    for path in checkpoint_entries(output_dir):
        if _step_of(path.name.removeprefix(WRITING_PREFIX)) > step:
            shutil.rmtree(path)

def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` (same step) is set aside first and removed last,
    so at every instant one complete checkpoint of that step exists."""
    aside = final.with_name(REPLACED_PREFIX + final.name)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)

def load_checkpoint(folder: Path, load: Callable[[Path], None]) -> str | None:
    """``load(folder)`` when the checkpoint is whole; why it could not be used, or None once it is loaded."""
    problem = checkpoint_problem(folder)
    if problem is None:
        try:
            load(folder)
        except Exception as exc:  # torch, safetensors and accelerate raise many types for a bad file
            problem = f"does not load ({_reason(exc)})"
    return problem

def load_newest_checkpoint(output_dir: Path, load: Callable[[Path], None],
                           agree: Callable[[bool], bool]) -> tuple[Path | None, list[str]]:
    """Load the newest checkpoint that is complete and loads; returns it and one note per skipped one.

    ``agree(failed_here)`` tells whether any process failed, so all processes skip the same checkpoints.
    """
    skipped = []
    for folder in reversed(checkpoint_dirs(output_dir)):
        problem = load_checkpoint(folder, load)
        if not agree(problem is not None):
            return folder, skipped
        skipped.append(f"{folder.name}: {problem or 'failed to load on another process'}")
    return None, skipped
