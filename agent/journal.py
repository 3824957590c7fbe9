"""The journal: grasps and events recorded, then published; held in memory while the disk
is full (control thread only).

Contract:

- **Record, then publish.** A grasp or an event seen on the PUB socket is already in the
  grasp log, except while the disk is full: then an event is published at once and
  recorded when space returns, and a grasp is published once it is committed.
- **Order.** Held grasps and events are written back in the order they were made; while
  anything is held every new write queues behind it.
- **Bounded.** At most ``grasp_log.buffer_grasps`` items are held (:attr:`HeldWrites.at_cap`:
  the daemon stops actuating), retried at most every :data:`FLUSH_RETRY_S`.
- **One alarm per outage.** The first failed write raises ``agent.alarm``
  (``storage_full``); the flush that empties the queue publishes ``agent.storage``.
- **At a stop** the held writes are retried for ``grasp_log.stop_flush_s``; what is still
  unwritten is logged as one JSON line per grasp (without images) and counted, and the
  daemon exits :data:`EXIT_UNWRITTEN`.
"""

from __future__ import annotations

import collections
import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from agent.config import GraspLogConfig
from agent.diskfull import is_disk_full
from agent.grasplog import GraspLog
from agent.logrecords import GraspRecord
from agent.topics import Topic
from agent.transport import EventPublisher

log = logging.getLogger(__name__)

FLUSH_RETRY_S = 0.5
"""How often grasps held in memory (disk full) are retried."""
EXIT_UNWRITTEN = 5
"""Exit status of a stop that could not write every held grasp (disk still full)."""

Held = GraspRecord | tuple[str, dict[str, Any], float]
"""A grasp, or an event (topic, data, time)."""


class HeldWrites:
    """The ordered, bounded queue of writes waiting for space."""

    def __init__(self, cap: int, retry_s: float = FLUSH_RETRY_S) -> None:
        self.cap = cap
        self.retry_s = retry_s
        self._items: collections.deque[Held] = collections.deque()
        self._last_try = -1e18

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[Held]:
        """What is held, oldest first (a copy)."""
        return list(self._items)

    @property
    def at_cap(self) -> bool:
        return len(self._items) >= self.cap

    def hold(self, item: Held) -> None:
        if not self._items:
            self._last_try = time.monotonic()
        self._items.append(item)

    def flush(
        self,
        glog: GraspLog,
        store_images: bool,
        on_grasp: Callable[[int, GraspRecord], None],
        force: bool = False,
    ) -> int | None:
        """Write what is held, in order; returns how many were written once all are (None
        while some remain). ``on_grasp(id, record)`` follows each grasp's commit."""
        if not self._items or not glog.is_open:
            return None
        now = time.monotonic()
        if not force and now - self._last_try < self.retry_s:
            return None
        self._last_try = now
        written = 0
        while self._items:
            item = self._items[0]
            try:
                if isinstance(item, GraspRecord):
                    gid = glog.log_grasp(item, store_images)
                else:
                    glog.add_event(item[0], item[1], item[2])
            except Exception as exc:
                if not is_disk_full(exc):
                    log.exception("could not write held grasps")
                return None
            self._items.popleft()
            written += 1
            if isinstance(item, GraspRecord):
                on_grasp(gid, item)
        return written


def grasp_summary(g: GraspRecord) -> dict[str, Any]:
    """What the journal keeps of a grasp the disk could not take (no images)."""
    return {
        "t_start": g.t_start,
        "condition_id": g.condition_id,
        "policy": g.policy_id,
        "mode": g.mode,
        "success": g.success,
        "q": g.q,
        "actions": [t.action for t in g.transitions],
    }


class Journal:
    """Record-then-publish of grasps and events over one :class:`GraspLog`.

    ``where()`` gives the current (condition name, active policy id), for the grasp
    summary and the disk-full alarm; ``watchdog()`` is fed while a stop waits for space.
    """

    def __init__(
        self,
        glog: GraspLog,
        cfg: GraspLogConfig,
        where: Callable[[], tuple[str, str | None]],
        watchdog: Callable[[], None],
    ) -> None:
        self.log = glog
        self.held = HeldWrites(cfg.buffer_grasps, FLUSH_RETRY_S)
        """Grasps and events waiting for disk space (in order, bounded)."""
        self.publisher: EventPublisher | None = None
        """The PUB socket, once bound (events before it are recorded only)."""
        self.storage_full = False
        self.last_grasp: dict[str, Any] = {}
        """The latest committed grasp, as published."""
        self._store_images = cfg.store_images
        self._stop_flush_s = cfg.stop_flush_s
        self._where = where
        self._watchdog = watchdog

    # -- events ---------------------------------------------------------------------------
    def emit(self, topic: Topic, data: dict[str, Any]) -> None:
        """Record an event, then publish it. With the disk full it is published now and
        recorded when space returns."""
        t = time.time()
        if self.held:  # behind held writes, to keep their order
            self.held.hold((str(topic), data, t))
        else:
            try:
                self.log.add_event(str(topic), data, t)
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                self.held.hold((str(topic), data, t))
                self.disk_full(exc)
        self.publish(topic, data)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Publish only (the caller recorded it, or it is a grasp already committed)."""
        if self.publisher is not None:
            self.publisher.publish(str(topic), data)

    def error(self, where: str, exc: BaseException) -> None:
        """Log an unexpected error with its traceback and record it as ``agent.error``;
        never raises."""
        tb = "".join(traceback.format_exception(exc))
        log.error("%s error: %s", where, tb)
        data = {"where": where, "message": f"{type(exc).__name__}: {exc}", "traceback": tb[-4000:]}
        try:
            if self.log.is_open:
                self.emit(Topic.ERROR, data)
            else:
                self.publish(Topic.ERROR, data)
        except Exception:
            log.exception("could not record an error event")

    # -- grasps ---------------------------------------------------------------------------
    def record_grasp(self, rec: GraspRecord) -> int:
        """Commit, then publish (a grasp seen on the PUB socket is durable); on a full disk,
        hold it in memory and raise one alarm. Returns the grasp's row id (0: held)."""
        if self.held:
            self.held.hold(rec)
            return 0
        try:
            gid = self.log.log_grasp(rec, self._store_images)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            self.held.hold(rec)
            self.disk_full(exc)
            return 0
        self._committed(gid, rec)
        return gid

    def _committed(self, gid: int, rec: GraspRecord) -> None:
        self.last_grasp = {
            "id": gid,
            "success": rec.success,
            "q": rec.q,
            "mode": rec.mode,
            "decide_ms": round(rec.decide_ms, 3),
            "policy": rec.policy_id,
            "condition": self._where()[0],
        }
        self.publish(Topic.GRASP, self.last_grasp)

    # -- the disk -------------------------------------------------------------------------
    def disk_full(self, exc: BaseException) -> None:
        """The first write that failed for lack of space: one alarm per outage."""
        if self.storage_full:
            return
        self.storage_full = True
        condition, policy = self._where()
        self.emit(
            Topic.ALARM,
            {
                "kind": "storage_full",
                "reason": f"grasp log cannot be written ({exc}); holding up to "
                f"{self.held.cap} grasps in memory",
                "condition": condition,
                "policy": policy,
            },
        )

    def flush_held(self, force: bool = False) -> None:
        """Retry the held writes (at most every FLUSH_RETRY_S unless ``force``)."""
        written = self.held.flush(self.log, self._store_images, self._committed, force)
        if written is not None and self.storage_full:
            self.storage_full = False
            self.emit(Topic.STORAGE, {"status": "recovered", "flushed": written})

    def final_flush(self) -> int:
        """At a stop: retry held writes for up to ``stop_flush_s``; returns how many grasps
        could still not be written (each logged as one JSON line, without images)."""
        deadline = time.monotonic() + self._stop_flush_s
        self.flush_held(force=True)
        while self.held and time.monotonic() < deadline:
            self._watchdog()
            time.sleep(FLUSH_RETRY_S)
            self.flush_held(force=True)
        if not self.held:
            return 0
        grasps = [g for g in self.held.items() if isinstance(g, GraspRecord)]
        for g in grasps:
            log.error("unwritten grasp %s", json.dumps(grasp_summary(g)))
        log.error(
            "%d grasps and %d events could not be written (disk still full after %.0f s):"
            " the grasps are in the log above without images; exiting %d",
            len(grasps),
            len(self.held) - len(grasps),
            self._stop_flush_s,
            EXIT_UNWRITTEN,
        )
        return len(grasps)
