"""Writes held in memory while the grasp log cannot be written (disk full).

Grasps and events are kept in order, retried at most every ``retry_s`` seconds and
written back, still in order, when space returns. The daemon stops actuating at
``cap`` held items, so memory stays bounded and nothing executed is dropped.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.grasplog import GraspLog, GraspRecord, is_disk_full

log = logging.getLogger(__name__)

Held = GraspRecord | tuple[str, dict[str, Any], float]
"""A grasp, or an event (topic, data, time)."""


class HeldWrites:
    """The ordered, bounded queue of writes waiting for space."""

    def __init__(self, cap: int, retry_s: float = 0.5) -> None:
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
