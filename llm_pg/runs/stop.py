"""A clean stop: SIGINT/SIGTERM let the training loop finish its step, save a checkpoint and exit."""

from __future__ import annotations

import logging
import signal

logger = logging.getLogger(__name__)


class StopRequest:
    """SIGINT/SIGTERM ask the loop to finish the current step, checkpoint and exit cleanly."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        logger.warning("%s received: finishing this step, then saving a checkpoint", self.requested)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
