"""Dataset exports for fine-tune jobs, on their own thread with their own read-only connection.

The control thread creates the job row and calls :meth:`Exporter.submit`; the
worker writes the export (``agent.export.export_condition``) under the exports
root and reports an :class:`ExportDone` through the callback, which the daemon
turns into a message for the control thread. Destinations are confined to the
exports root: a resolved path outside it is refused.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.export import export_condition
from agent.logreader import LogReader
from agent.spec import Spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportDone:
    """The outcome of one job's export."""

    job: int
    """Job id."""
    condition: str
    """Condition exported."""
    path: Path | None
    """The export directory (None when it failed)."""
    index: dict[str, Any]
    """The export's index.json ({} when it failed)."""
    error: str
    """Why it failed ('' on success)."""


def confined(root: Path, name: str) -> Path:
    """``root / name`` resolved, or ValueError if it would leave ``root``."""
    base = root.resolve()
    dest = (base / name).resolve()
    if dest.parent != base:
        raise ValueError(f"export name {name!r} leaves {base}")
    return dest


class Exporter:
    """One worker thread writing job exports."""

    def __init__(
        self,
        db_path: Path,
        root: Path,
        spec: Spec,
        on_done: Callable[[ExportDone], None],
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.db_path = db_path
        self.root = root
        self.spec = spec
        self.on_done = on_done
        self.busy_timeout_ms = busy_timeout_ms
        self._jobs: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="exporter", daemon=True)
            self._thread.start()

    def submit(self, job: int, condition: str) -> None:
        """Queue the export of ``condition`` for ``job`` (thread-safe, returns at once)."""
        self._jobs.put((job, condition))

    def close(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _work(self) -> None:
        with LogReader(self.db_path, self.busy_timeout_ms) as reader:
            while (item := self._jobs.get()) is not None:
                job, condition = item
                try:
                    dest = confined(self.root, f"job-{job:06d}-{condition}")
                    index = export_condition(reader, condition, dest, self.spec)
                except Exception as exc:  # reported to the control thread, never lost
                    log.exception("export of job %d failed", job)
                    done = ExportDone(job, condition, None, {}, f"{type(exc).__name__}: {exc}")
                else:
                    done = ExportDone(job, condition, dest, index, "")
                self.on_done(done)
