"""Stopping politely: SIGTERM or Ctrl-C (a scheduler's preemption) becomes a flag the training loop reads at a
step boundary, where it saves a checkpoint; a second signal means "now"."""
from __future__ import annotations

import signal
from typing import Callable


class StopSignals:
    """While entered, SIGTERM and SIGINT set ``requested`` instead of killing the process."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.requested: int | None = None
        self._previous: dict = {}

    def _on_signal(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        self.say(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step "
                 f"(send again to stop at once)")

    def __enter__(self) -> "StopSignals":
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
