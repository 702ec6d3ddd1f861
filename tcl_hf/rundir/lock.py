"""One run per folder: an exclusive lock on ``output_dir`` for a run's lifetime. What appears under the run's output
names while the lock is held is what tcl_hf wrote: releasing the lock lists it in the run's marker."""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import TCLError
from .files import open_for_writing
from .folder import check_run_folder
from .marker import Snapshot, output_files, record_written, written_since
from .names import LOCK_FILE, LOCK_PID_FILE

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
        self._before: Snapshot | None = None

    def acquire(self) -> "RunLock":
        self._take()
        self._before = output_files(self.path.parent)
        return self

    def _take(self) -> "RunLock":
        fd = open_for_writing(self.path, os.O_RDWR | os.O_CREAT)
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
        path = self.path.with_name(LOCK_PID_FILE)
        for _ in range(2):
            try:
                fd = open_for_writing(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                holder = path.read_text(errors="replace").strip()
                if _died_here(holder):
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
        """List what was written under the lock in the run's marker, then unlock."""
        try:
            if self._before is not None:
                record_written(self.path.parent, written_since(self.path.parent, self._before))
                self._before = None
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays for the next run to lock
            self._fd = None
        if self._pid_file:
            self.path.with_name(LOCK_PID_FILE).unlink(missing_ok=True)
            self._pid_file = False

    def __del__(self):
        self._unlock()  # an abandoned lock (a run that failed to start) wrote nothing worth listing

@contextmanager
def run_folder_lock(output_dir: Path, is_main: bool, agree: Callable[[bool], bool]) -> Iterator[None]:
    """Hold the folder's lock for the block: the main process takes it and every process stops if it could not be
    taken (``agree(failed_here)`` tells every process whether any failed). It is released however the block ends,
    so a stopped or failed run frees the folder for its resume. A folder that is not a run's is refused first, so
    it gets no lock file."""
    check_run_folder(output_dir)
    lock, problem = None, None
    if is_main:
        try:
            lock = RunLock(output_dir).acquire()
        except TCLError as exc:
            problem = exc
    if agree(problem is not None):
        raise problem or TCLError(f"output_dir: {output_dir} is in use by another tcl_hf run")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()

@contextmanager
def shared_run_lock(output_dir: Path, key: str) -> Iterator[None]:
    """Hold ``output_dir``'s lock shared while reading a finished run's files: readers share it, a run training or
    resuming there holds it exclusively, so reading waits for no one and either refuses at once (one line under
    ``key``) or reads while no run can start. A folder without the lock file never held a run. Where the file
    system has no ``flock``, a live holder's pid file refuses; nothing is held then."""
    path = Path(output_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a planted link is refused (ELOOP), never read through
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TCLError(f"{key}: {path.parent} is in use by a tcl_hf run ({_read_holder(fd)}), which is still "
                           f"training it; wait for it to finish") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            _refuse_live_pid_file(path.with_name(LOCK_PID_FILE), key)
        yield
    finally:
        os.close(fd)  # drops the shared lock


def _refuse_live_pid_file(pid_file: Path, key: str) -> None:
    try:
        holder = pid_file.read_text(errors="replace").strip()
    except FileNotFoundError:
        return
    if _died_here(holder):
        return  # left by a run that died on this machine
    raise TCLError(f"{key}: {pid_file.parent} is in use by a tcl_hf run ({holder}), which is still training it; "
                   f"wait for it to finish")

def _died_here(holder: str) -> bool:
    """Whether a pid file's holder (``_holder_text``) is a process of this machine that no longer runs."""
    host, _, pid = holder.partition(" pid ")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))

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
