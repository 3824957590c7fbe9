"""The daemon's status: the snapshot the command thread answers from, the status line
for systemd and the log, and readiness (``READY=1``).

Contract:

- The control thread builds a new snapshot between grasps (:meth:`Status.refresh`) and
  replaces the old one; any thread reads it (:meth:`Status.snapshot`), never a half-made
  one. The pending-command count, the uptime and the decision latencies are the only
  parts other threads update, under one lock.
- ``READY=1`` is sent once a policy is served, never after a stop was requested.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from agent import lifecycle as lc
from agent import race_view
from agent.watch import OutcomeWatch
from plumbing.sd_notify import Notifier

if TYPE_CHECKING:
    from agent.journal import Journal
    from agent.policies import PolicySlot

log = logging.getLogger(__name__)


class Observed(Protocol):
    """What the snapshot reads from the daemon (control thread)."""

    @property
    def state(self) -> lc.State: ...
    @property
    def paused(self) -> bool: ...
    @property
    def pause_reason(self) -> str: ...
    @property
    def grasps(self) -> int: ...
    @property
    def driver_down(self) -> str: ...
    @property
    def watch(self) -> OutcomeWatch: ...
    @property
    def endpoints(self) -> dict[str, str]: ...
    @property
    def journal(self) -> Journal: ...
    @property
    def slot(self) -> PolicySlot: ...


class Status:
    """Snapshot, status line and readiness of one daemon."""

    def __init__(
        self, notifier: Notifier, stop_event: threading.Event, pending: Callable[[], int]
    ) -> None:
        self.ready = threading.Event()
        """Set once a policy is served (tests and the CLI wait on it)."""
        self.started_at = time.time()
        self.recent: collections.deque[bool] = collections.deque(maxlen=50)
        """Outcomes of the last 50 grasps (for the status line)."""
        self.no_policy_reason = "no policy loaded yet"
        self.last_command: dict[str, Any] = {}
        self._notifier = notifier
        self._stop_event = stop_event
        self._pending = pending
        self._lock = threading.Lock()
        self._latencies: collections.deque[float] = collections.deque(maxlen=2000)
        self._snapshot: dict[str, Any] = {}

    # -- any thread -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The latest status: a dict the control thread replaces, never edits."""
        snap = self._snapshot
        return {
            **snap,
            "pending_commands": self._pending(),
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    def latencies_ms(self) -> list[float]:
        """Recent decision latencies in ms."""
        with self._lock:
            return [x * 1e3 for x in self._latencies]

    def add_latency(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds)

    # -- control thread -------------------------------------------------------------------
    def refresh(self, d: Observed) -> None:
        """Build the next snapshot from the daemon's parts."""
        s, held = d.state, d.journal.held
        actuating = d.slot.serving() is not None and not d.paused and not d.driver_down
        detector, probation = d.watch.snapshot()
        self._snapshot = {
            **s.to_dict(),
            "fallback": s.fallback,
            "paused": d.paused,
            "pause_reason": d.pause_reason,
            "actuating": actuating and not held.at_cap,
            "no_policy_reason": "" if actuating else self.not_actuating(d),
            "grasps": d.grasps,
            "detector": detector,
            "probation": probation,
            "race": None if s.race is None else race_view.view(s.race),
            "rounds": None if s.rounds is None else rounds_view(s),
            "storage": {"status": "full" if d.journal.storage_full else "ok", "held": len(held)},
            "driver": {"state": "down" if d.driver_down else "up", "message": d.driver_down},
            "last_grasp": d.journal.last_grasp,
            "last_command": self.last_command,
            "loading": sorted(set(d.slot.loading.values())),
            "warm": d.slot.warm.ids,
            "endpoints": dict(d.endpoints),
        }

    def not_actuating(self, d: Observed) -> str:
        if d.paused:
            return f"paused: {d.pause_reason}"
        if d.driver_down:
            return f"driver unavailable: {d.driver_down}"
        if d.state.policy is None:
            return self.no_policy_reason or "no policy"
        if d.slot.serving() is None:
            return f"loading policy {d.state.policy}"
        return ""

    def line(self, state: lc.State, paused: bool, grasps: int) -> str:
        """One line for systemd's STATUS= and the log."""
        pol = state.policy or "none"
        phase = "paused" if paused else state.phase.value
        rate = f"{sum(self.recent) / len(self.recent):.0%}" if self.recent else "-"
        return (
            f"{phase} condition={state.condition} policy={pol} grasps={grasps}"
            f" success(last {len(self.recent)})={rate}"
        )

    def refuse(self, reason: str) -> None:
        """Nothing can be served: say why (status, systemd)."""
        self.no_policy_reason = reason
        log.error("refusing to actuate: %s", reason)
        self._notifier.status(f"not actuating: {reason}")

    def served(self, line: str) -> None:
        """A policy is served: ``READY=1`` (unless a stop was requested) and the status."""
        self.no_policy_reason = ""
        if self._stop_event.is_set():
            return
        self._notifier.ready(line)
        self.ready.set()
        self._notifier.status(line)


def rounds_view(s: lc.State) -> dict[str, Any]:
    """The rounds under the current condition for ``ctl status`` (the race is its own key)."""
    assert s.rounds is not None
    cfg = s.rounds_cfg
    view = {k: v for k, v in s.rounds.to_dict().items() if k not in ("race", "last_grasp")}
    return {
        **view,
        "collected": s.explored if s.phase is lc.Phase.EXPLORING else None,
        "next_job_at": s.target if s.phase is lc.Phase.EXPLORING else None,
        "settings": {
            "enabled": cfg.enabled,
            "margin": cfg.margin,
            "max_rounds": cfg.max_rounds,
            "max_grasps": cfg.max_grasps,
        },
    }
