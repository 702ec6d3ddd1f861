"""The run marker: a small JSON that only tcl_hf writes, naming tcl_hf and its version and listing the files its runs
wrote in the folder. Its presence makes a folder a tcl_hf run; its list is all that ``overwrite=true`` removes
(besides the checkpoints, which the run replaces whole as it goes).

The trainer lists its own files when a run starts; whatever else appears under the run's output names while tcl_hf
holds the folder's lock (the exported Hub folder, the report, plots, a repaired dataset) is listed when the lock is
released, so a file the user adds there at another time is never taken for the run's.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Iterable

from ..errors import ConfigError
from .files import atomic_write_text
from .names import CHECKPOINTS_DIR, RUN_FILES, RUN_MARKER_FILE, RUN_OUTPUTS

TOOL = "tcl_hf"

# A file's identity: a rewrite (new inode from an atomic write, or new size or time) counts as written.
Snapshot = dict[str, tuple[int, int, int]]


def read_marker(output_dir: Path) -> dict | None:
    """The folder's marker, None when it has none; one that tcl_hf cannot have written is a one-line error."""
    path = Path(output_dir) / RUN_MARKER_FILE
    if not os.path.lexists(path):
        return None
    try:
        marker = None if path.is_symlink() else json.loads(path.read_text())
    except (ValueError, OSError):
        marker = None
    written = marker.get("written") if isinstance(marker, dict) else None
    if marker is None or marker.get("tool") != TOOL or not (isinstance(written, list)
                                                            and all(isinstance(w, str) for w in written)):
        raise ConfigError(f"output_dir: {path} is damaged or was not written by tcl_hf, so which files are the run's "
                          f"is unknown; delete the run's outputs by hand or choose another output_dir")
    return marker


def _version() -> str:
    # From the installed distribution: the package's own __version__ would make the package import itself.
    try:
        return importlib.metadata.version(TOOL)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"  # run from a source tree that was never installed


def _write_marker(output_dir: Path, written: Iterable[str]) -> None:
    marker = {"tool": TOOL, "version": _version(), "written": sorted(set(written))}
    atomic_write_text(Path(output_dir) / RUN_MARKER_FILE, json.dumps(marker, indent=1) + "\n")


def mark_run(output_dir: Path, resumed: bool) -> None:
    """A run starts writing: mark the folder as a tcl_hf run listing the trainer's files; a resumed run keeps the
    list of the run it continues (and so marks a run made before markers existed)."""
    earlier = read_marker(output_dir) if resumed else None
    _write_marker(output_dir, [*(earlier["written"] if earlier else []), *RUN_FILES])


def record_written(output_dir: Path, names: Iterable[str]) -> None:
    """Add files to a marked run's list (a folder without a marker is not a run: nothing is recorded)."""
    names = list(names)
    marker = read_marker(output_dir)
    if marker is not None and not set(names) <= set(marker["written"]):
        _write_marker(output_dir, [*marker["written"], *names])


def output_files(output_dir: Path) -> Snapshot:
    """Every regular file under the run's output names except the checkpoints, by path relative to the folder;
    links are neither listed nor followed."""
    root, found = Path(output_dir), {}
    for name in RUN_OUTPUTS:
        top = root / name
        if name == CHECKPOINTS_DIR or top.is_symlink():
            continue
        if top.is_dir():
            paths = [Path(d) / f for d, _, files in os.walk(top) for f in files]
        else:
            paths = [top]
        for path in paths:
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[path.relative_to(root).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


def written_since(output_dir: Path, before: Snapshot) -> list[str]:
    return sorted(name for name, ident in output_files(output_dir).items() if before.get(name) != ident)


def owned_file(output_dir: Path, name: str) -> Path | None:
    """The file a marker entry names, when it is still one a run could have written: under one of the run's output
    names (not the checkpoints), reached without a link, and a regular file. Anything else is left alone."""
    parts = PurePosixPath(name).parts
    if not parts or parts[0] not in RUN_OUTPUTS or parts[0] == CHECKPOINTS_DIR or ".." in parts:
        return None
    path = Path(output_dir)
    for part in parts[:-1]:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    path = path / parts[-1]
    try:
        return path if stat.S_ISREG(path.lstat().st_mode) else None
    except FileNotFoundError:
        return None
