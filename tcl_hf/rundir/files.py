"""Writing a file in a run folder: never through a symbolic link (the folder may hold links the user made, or be
shared), and whole (written beside, then renamed), or one whole line at a time."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import TCLError


def _refuse_link(path: Path) -> TCLError:
    return TCLError(f"{path} is a symbolic link; tcl_hf does not write through links in a run folder (that would "
                    f"change the file it points to); remove the link or choose another output_dir")


def open_for_writing(path: Path, flags: int) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (one line) instead of writing to where it points."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise _refuse_link(path) from None
        raise


def append_line(path: Path, line: str) -> None:
    """One line with a single append: a kill leaves whole lines, or a torn last one."""
    fd = open_for_writing(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside, then rename: a reader never sees half a file. A link at ``path`` is refused, not replaced."""
    path = Path(path)
    if path.is_symlink():
        raise _refuse_link(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # left by a killed write (or planted: a link is removed, never followed)
    with os.fdopen(open_for_writing(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w") as f:
        f.write(text)
    os.replace(tmp, path)
