"""Errors meant for the user: the command line prints them as one line, without a traceback."""
from __future__ import annotations

from pathlib import Path


class TCLError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(TCLError):
    """A recipe key or override that is unknown, mistyped or out of range."""


class DataError(TCLError):
    """A dataset, label file or image that cannot be used as given."""


class StopRequested(Exception):
    """Not an error: a stop signal arrived and the run saved a checkpoint at a step boundary."""

    def __init__(self, checkpoint: Path):
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint


def one_line(exc: Exception) -> str:
    """The user-facing line of an error; one raised in a loader worker arrives wrapped in the
    worker's traceback, with the original message as its last line."""
    lines = str(exc).strip().splitlines()
    last = lines[-1] if lines else type(exc).__name__
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last

