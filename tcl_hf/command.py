"""What every command shares (``train.py``, ``tcl_hf.sweep``, ``tcl_hf.export``, ``tcl_hf.repair``): the one runner
that turns how a command ends into its exit code and one line, and the checks their arguments get before any work."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from .config import repo_id_problem
from .errors import StopRequested, TCLError, one_line


def is_main_process() -> bool:
    # Before accelerate starts, the launcher's RANK tells which process should speak.
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def run_command(work: Callable[[], None], again: str, intact: str = "") -> int:
    """Run a command's ``work``; what ends it becomes the exit code and, from the main process only, one line on
    stderr, never a traceback: 0 when done; 2 for a TCLError (bad input, explained) or an OSError (the machine's
    side: disk full, read-only, permissions); 0 for a stop that saved a checkpoint and 130 for Ctrl-C, both saying
    how to continue (``again``). ``intact`` names what the command keeps whole whatever the OSError."""
    speak = is_main_process()

    def say(text: str) -> None:
        if speak:
            print(text, file=sys.stderr)

    try:
        work()
    except TCLError as exc:
        say(f"error: {one_line(exc)}")
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        say(f"error: {exc.strerror or one_line(exc)}{where}" + (f"; {intact}" if intact else ""))
        return 2
    except StopRequested as stop:
        say(f"stopped; checkpoint saved to {stop.checkpoint}. To continue: {again}")
        return 0
    except KeyboardInterrupt:
        say(f"interrupted; to continue: {again}")
        return 130
    return 0


def refuse_file_in_the_way(folder: Path, what: str, advice: str) -> None:
    """A TCLError when a file stands at ``folder`` or above it, where a command is about to make a folder."""
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise TCLError(f"{what}: {path} is a file, not a folder; {advice}")
            return


def hub_repo_id(value: str) -> str:
    """A ``--push`` repo id, checked before any work by the rule of ``hub.repo_id``."""
    problem = repo_id_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{value!r} {problem}")
    return value
