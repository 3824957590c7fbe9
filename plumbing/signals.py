"""Stop signals for the daemon: the first SIGTERM/SIGINT asks for a clean stop, a second one
exits at once with :data:`EXIT_SECOND_SIGNAL`.

Standard library only, so the CLI installs it before anything slow is imported:
a SIGTERM that arrives while the daemon is still starting is never lost and
never answered by the default action (death by signal).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

EXIT_SECOND_SIGNAL = 4
"""Exit status when a second SIGTERM/SIGINT arrives before the first finished the stop."""


class StopSignals:
    """SIGTERM/SIGINT handlers that set :attr:`event`; install from the main thread."""

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event or threading.Event()
        self.received = 0

    def install(self) -> StopSignals:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        if self.received > 1:
            os._exit(EXIT_SECOND_SIGNAL)
        self.event.set()
