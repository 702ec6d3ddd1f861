"""The run folder (``output_dir``): every path a run writes, and the rules that keep it safe.

One run at a time holds the folder (an exclusive lock for the run's lifetime); a new run never
replaces another run's outputs unless told to, and then only a tcl_hf run's and only once the new
run is ready to train; a resumed run must be the same run; ``metrics.jsonl`` grows a whole line at a
time; checkpoints appear atomically and carry a manifest, so an incomplete or damaged one is never
mistaken for a good one.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

from .config import flatten, read_recipe
from .errors import ConfigError, TCLError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LABEL_ISSUES_FILE = "label_issues.csv"
CHECKPOINTS_DIR = "checkpoints"
HUB_DIR = "hub"
PLOTS_DIR = "plots"
LOCK_FILE = ".tcl_hf.lock"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_PREFIX = "step_"
# A checkpoint moved aside while a newer one of the same step takes its name; a kill between the two
# renames leaves it as the only copy of that step, so it still counts as a checkpoint.
REPLACED_PREFIX = ".replaced-"
# What a run writes; `overwrite=true` removes exactly these, nothing else the folder holds.
RUN_OUTPUTS = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, LABEL_ISSUES_FILE, CHECKPOINTS_DIR, HUB_DIR, PLOTS_DIR)
# Keys a resumed run may change without becoming a different run.
RESUMABLE_CHANGES = ("output_dir", "train.resume", "train.epochs", "train.max_steps", "data.num_workers", "overwrite",
                     "train.eval_batch_size", "train.checkpoints_to_keep")
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


def run_differences(saved: dict, current: dict) -> list[str]:
    """Keys (dotted) whose values differ between two config dicts, ignoring those a resume may change."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES
            and not k.startswith(RESUMABLE_PREFIXES)]


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


# ---- the lock ----------------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on ``output_dir`` for one run's lifetime (``flock``: the kernel releases it
    when the holder dies, so a crashed run never leaves a stale lock). Where the file system has no
    ``flock`` (some network mounts), a lock file naming host and pid stands in, and one left by a dead
    process on this host is taken over."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None
        self._pid_file = False

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise TCLError(f"output_dir: {self.path.parent} is in use by another tcl_hf run ({holder}); wait for it "
                           f"to finish or choose another output_dir") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return self._acquire_pid_file()
        os.ftruncate(fd, 0)
        os.write(fd, _holder_text().encode())
        self._fd = fd
        return self

    def _acquire_pid_file(self) -> "RunLock":
        path = self.path.with_suffix(".pid")
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = path.read_text(errors="replace").strip()
                host, _, pid = holder.partition(" pid ")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    path.unlink(missing_ok=True)  # left by a run that died on this machine
                    continue
                raise TCLError(f"output_dir: {self.path.parent} is in use by another tcl_hf run ({holder}); "
                               f"wait for it to finish or choose another output_dir") from None
            os.write(fd, _holder_text().encode())
            os.close(fd)
            self._pid_file = True
            return self
        raise TCLError(f"output_dir: cannot lock {self.path.parent}; choose another output_dir")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays for the next run to lock
            self._fd = None
        if self._pid_file:
            self.path.with_suffix(".pid").unlink(missing_ok=True)
            self._pid_file = False

    def __del__(self):
        self.release()


def _holder_text() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode(errors="replace").strip()
    return text or "unknown process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


# ---- checkpoints -----------------------------------------------------------------------------------
def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _step_of(name: str) -> int | None:
    name = name.removeprefix(REPLACED_PREFIX)
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


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
                     barrier: Callable[[], None]) -> Path:
    """Write a checkpoint aside with ``write(folder)`` (every process), add the manifest, rename it into place,
    and keep the newest ``keep``. Any error while writing gives one line and leaves no temporary folder."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"
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
            shutil.rmtree(old)
    barrier()
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` (same step) is set aside first and removed last,
    so at every instant one complete checkpoint of that step exists."""
    aside = final.with_name(REPLACED_PREFIX + final.name)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


def load_newest_checkpoint(output_dir: Path, load: Callable[[Path], None],
                           agree: Callable[[bool], bool]) -> tuple[Path | None, list[str]]:
    """Load the newest checkpoint that is complete and loads; returns it and one note per skipped one.

    ``agree(failed_here)`` tells whether any process failed, so all processes skip the same checkpoints.
    """
    skipped = []
    for folder in reversed(checkpoint_dirs(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            try:
                load(folder)
            except Exception as exc:  # torch, safetensors and accelerate raise many types for a bad file
                problem = f"does not load ({_reason(exc)})"
        if not agree(problem is not None):
            return folder, skipped
        skipped.append(f"{folder.name}: {problem or 'failed to load on another process'}")
    return None, skipped
