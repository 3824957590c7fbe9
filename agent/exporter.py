"""Dataset exports for fine-tune jobs, on their own thread with their own read-only connection.

The control thread creates the job row and calls :meth:`Exporter.submit`; the
worker writes the export (``agent.export.export_condition``) under the exports
root and reports an :class:`ExportDone` through the callback, which the daemon
turns into a message for the control thread. Destinations are confined to the
exports root: a resolved path outside it is refused.

The exports root stays within a disk budget (``agent.exports_budget_mb``): after each
export the worker drops the oldest exports (by job id) whose jobs have ended (a verdict,
cancelled, kept, or no row at all) until the rest fit; an export a live job still needs
is never dropped, even when it alone exceeds the budget. What was dropped is logged and
reported in :attr:`ExportDone.dropped`.
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.export import export_condition
from agent.logreader import LogReader
from agent.spec import Spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnDisk:
    """One export directory under the exports root."""

    job: int
    path: Path
    bytes: int


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
    dropped: tuple[OnDisk, ...] = ()
    """Older exports dropped to stay within the disk budget."""


EXPORT_NAME = re.compile(r"^job-(\d+)-")
"""An export directory's name (``job-<id>-<condition>``); anything else is left alone."""


def over_budget(
    exports: Iterable[OnDisk], budget_bytes: int, needed: Callable[[int], bool]
) -> list[OnDisk]:
    """The exports to drop, oldest job first, until the rest fit in ``budget_bytes``; one
    whose job is ``needed`` is never among them (pure)."""
    ordered = sorted(exports, key=lambda e: e.job)
    total = sum(e.bytes for e in ordered)
    drop: list[OnDisk] = []
    for e in ordered:
        if total <= budget_bytes:
            break
        if not needed(e.job):
            drop.append(e)
            total -= e.bytes
    return drop


def exports_on_disk(root: Path) -> list[OnDisk]:
    """Every export directory under ``root`` with its size (files, not following links)."""
    out = []
    for d in root.iterdir() if root.is_dir() else ():
        m = EXPORT_NAME.match(d.name)
        if m is None or d.is_symlink() or not d.is_dir():
            continue
        size = sum(f.lstat().st_size for f in d.rglob("*") if not f.is_dir())
        out.append(OnDisk(int(m.group(1)), d, size))
    return out


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
        budget_bytes: int = 0,
        ended: Collection[str] = (),
    ) -> None:
        """``budget_bytes``: the exports root's budget (0: none); ``ended``: the job
        statuses whose exports may be dropped to keep it."""
        self.db_path = db_path
        self.root = root
        self.spec = spec
        self.on_done = on_done
        self.busy_timeout_ms = busy_timeout_ms
        self.budget_bytes = budget_bytes
        self.ended = frozenset(ended)
        self._jobs: queue.Queue[tuple[int, str, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="exporter", daemon=True)
            self._thread.start()

    def submit(self, job: int, condition: str, after: int = 0) -> None:
        """Queue the export of ``condition``'s grasps after row ``after`` for ``job``
        (thread-safe, returns at once)."""
        self._jobs.put((job, condition, after))

    def close(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _work(self) -> None:
        with LogReader(self.db_path, self.busy_timeout_ms) as reader:
            while (item := self._jobs.get()) is not None:
                job, condition, after = item
                try:
                    dest = confined(self.root, f"job-{job:06d}-{condition}")
                    index = export_condition(reader, condition, dest, self.spec, after=after)
                except Exception as exc:  # reported to the control thread, never lost
                    log.exception("export of job %d failed", job)
                    done = ExportDone(job, condition, None, {}, f"{type(exc).__name__}: {exc}")
                else:
                    done = ExportDone(job, condition, dest, index, "")
                self.on_done(replace(done, dropped=self._trim(reader, job)))

    def _trim(self, reader: LogReader, current: int) -> tuple[OnDisk, ...]:
        """Keep the exports root within its budget (after a failed export too: a full disk
        is a likely cause); never raises (a failure is logged, the export stands)."""
        if self.budget_bytes <= 0:
            return ()

        def needed(job: int) -> bool:
            row = reader.job(job)
            return job == current or (row is not None and str(row["status"]) not in self.ended)

        try:
            drop = over_budget(exports_on_disk(self.root), self.budget_bytes, needed)
        except (OSError, ValueError):
            log.exception("exports under %s could not be measured; none dropped", self.root)
            return ()
        for e in drop:
            shutil.rmtree(e.path, ignore_errors=True)
            log.warning(
                "export %s (job %d, %.1f MB) dropped: the exports exceed their budget of %.0f MB",
                e.path,
                e.job,
                e.bytes / 1e6,
                self.budget_bytes / 2**20,
            )
        return tuple(drop)
