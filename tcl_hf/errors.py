"""Errors meant for the user: the command line prints them as one line, without a traceback."""
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
