"""The warm policies: the one being served and the fallback, by id (control thread only).

Which policy is active is decided by the lifecycle state (``State.policy``);
this module only holds the warmed :class:`agent.policy.Policy` objects, so that
a swap, a rollback after a failed probation or after a run-time fault is a
change of reference between two grasps and never waits on a load.
"""

from __future__ import annotations

import queue
import threading

from agent.policy import Policy


class _Reaper:
    """Releases dropped policies on its own thread: destroying ONNX Runtime sessions takes
    2-10 ms, which must not land on the control thread between two grasps."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Policy | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the thread (before the first swap: a thread start must not land in one)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="policy-reaper", daemon=True)
                self._thread.start()

    def release(self, policy: Policy) -> None:
        self.ensure_started()
        self._queue.put(policy)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            del item  # the last reference: the sessions are freed here


class WarmPolicies:
    """Warmed policies keyed by id; keeps what :meth:`keep` names, drops the rest.

    A dropped policy is released on a background thread (never on the caller's).
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Policy] = {}
        self._reaper = _Reaper()

    def get(self, policy_id: str | None) -> Policy | None:
        """The warmed policy with this id, or None (not loaded yet, or dropped)."""
        return None if policy_id is None else self._by_id.get(policy_id)

    def __contains__(self, policy_id: object) -> bool:
        return policy_id in self._by_id

    def put(self, policy: Policy) -> None:
        self._reaper.ensure_started()
        self._by_id[policy.id] = policy

    def drop(self, policy_id: str) -> None:
        gone = self._by_id.pop(policy_id, None)
        if gone is not None:
            self._reaper.release(gone)

    def keep(self, *policy_ids: str | None) -> None:
        """Drop every policy not named (the active one and the fallback are kept warm)."""
        wanted = {p for p in policy_ids if p}
        for pid in [p for p in self._by_id if p not in wanted]:
            self._reaper.release(self._by_id.pop(pid))

    @property
    def ids(self) -> list[str]:
        return sorted(self._by_id)
