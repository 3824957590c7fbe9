"""A deadline on every policy decision, kept by a thread of its own.

One ONNX Runtime decision can outlast any budget checked after it returns (a
graph whose loop count or tensor size depends on the image runs for minutes on
the images of a changed world). The control thread brackets each decision with
:meth:`DecisionGuard.deciding`; the guard thread, every ``tick_s``:

- while a decision runs, feeds the systemd watchdog (the decision is
  supervised: the guard itself ends it), so a slow decision never looks like
  a hung daemon;
- after ``deadline_s / 2`` of active time, writes a marker file naming the
  policy (so a process that dies in this decision anyway is known at the next
  start: :func:`read_marker`), and removes it when the decision ends;
- at ``deadline_s``, aborts the decision (ONNX Runtime's terminate flag): the
  control thread's ``act`` raises ``PolicyFault("hung")``;
- if the aborted decision has still not returned ``grace_s`` later (an
  operator that ignores the flag), ends the process with :data:`EXIT_HUNG`
  (the marker stays: the next start takes that policy out of service).

Active time counts at most ``4 x tick_s`` per tick, so a stopped or suspended
process (SIGSTOP, a VM pause) never turns a normal decision into a hung one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from plumbing import atomic

log = logging.getLogger(__name__)

EXIT_HUNG = 3
"""Exit status when an aborted decision never returned (systemd restarts the agent)."""
MARKER_FILE = "deciding.json"
"""Name of the marker file in the agent's data folder."""


class Abortable(Protocol):
    """What the guard needs of a policy: its id and a thread-safe abort of the running act()."""

    @property
    def id(self) -> str: ...

    def abort(self) -> None: ...


def read_marker(path: Path) -> dict[str, object] | None:
    """The marker a previous process left (policy, since, active_s), or None.

    A marker that cannot be parsed is reported as ``{"policy": None}`` (the
    process died while writing it: which policy is unknown)."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read decision marker %s: %s", path, exc)
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {"policy": None}
    if not isinstance(data, dict) or not isinstance(data.get("policy"), str):
        return {"policy": None}
    return data


def clear_marker(path: Path) -> None:
    """Remove the marker (missing is fine)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class DecisionGuard:
    """Watches the decision in progress; see the module docstring. Start with :meth:`start`."""

    def __init__(
        self,
        marker: Path,
        deadline_s: float,
        grace_s: float,
        feed_watchdog: Callable[[], None],
        tick_s: float = 0.1,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        if deadline_s <= 0 or grace_s <= 0 or tick_s <= 0:
            raise ValueError("deadline_s, grace_s and tick_s must be > 0")
        self.marker = marker
        self.deadline_s = deadline_s
        self.grace_s = grace_s
        self.tick_s = tick_s
        self._feed = feed_watchdog
        self._exit = exit_process
        self._lock = threading.Lock()
        self._policy: Abortable | None = None
        self._serial = 0
        self._marked = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.aborted = 0
        """Decisions aborted at the deadline (for tests and status)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decision-guard", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    @contextlib.contextmanager
    def deciding(self, policy: Abortable) -> Iterator[None]:
        """Bracket one decision of ``policy`` (control thread; two attribute writes if fast)."""
        with self._lock:
            self._policy = policy
            self._serial += 1
        try:
            yield
        finally:
            with self._lock:
                self._policy = None
                if self._marked:
                    self._marked = False
                    clear_marker(self.marker)

    def _run(self) -> None:
        watched, active, aborted_at = -1, 0.0, None
        last = time.monotonic()
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            step, last = min(now - last, 4 * self.tick_s), now
            with self._lock:
                policy, serial = self._policy, self._serial
                if policy is None:
                    watched = -1
                    continue
                if serial != watched:
                    watched, active, aborted_at = serial, 0.0, None
                    continue
                active += step
                if not self._marked and active >= self.deadline_s / 2:
                    self._write_marker(policy.id, active)
            if aborted_at is None:
                self._feed()
                if active >= self.deadline_s:
                    aborted_at = active
                    self.aborted += 1
                    log.error(
                        "policy %s: decision still running after %.1f s; aborting it",
                        policy.id,
                        active,
                    )
                    policy.abort()
            elif active - aborted_at >= self.grace_s:
                log.critical(
                    "policy %s: aborted decision did not return within %.1f s; exiting %d"
                    " (the next start will not serve it)",
                    policy.id,
                    self.grace_s,
                    EXIT_HUNG,
                )
                logging.shutdown()
                self._exit(EXIT_HUNG)
                return
            else:
                self._feed()

    def _write_marker(self, policy_id: str, active: float) -> None:
        """Called with the lock held: write-then-rename, so a reader sees all or nothing."""
        mark = {"policy": policy_id, "since": time.time() - active, "active_s": active}
        try:
            atomic.write_text(self.marker, json.dumps(mark))
            self._marked = True
        except OSError as exc:  # a full disk must not stop the guard
            log.warning("cannot write decision marker %s: %s", self.marker, exc)
