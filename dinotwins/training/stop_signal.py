"""A graceful stop for training: on SIGTERM or SIGINT (Ctrl-C) the step in flight finishes, a checkpoint of it is
saved, and the run ends with a message saying how to resume; a second signal stops at once (KeyboardInterrupt),
from the last checkpoint.

Only a single-process run installs the handlers (and only from the main thread): under `torchrun` every rank would
have to agree on the step to stop at, so there a signal keeps its default effect and `--resume` starts from the
last periodic checkpoint. A signal the process was started ignoring (SIGINT for a shell's background job) stays
ignored.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: `requested` holds the first signal number received inside it, else 0."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.requested = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = previous
                    signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.requested = signum

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


__all__ = ["StopSignals", "SIGNALS"]
