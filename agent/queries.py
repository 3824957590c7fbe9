"""Read-only queries for the command thread, on its own SQLite connection.

Never used on the control thread. ``stats`` reads the running totals the writer
keeps per (condition, policy, mode) (``grasp_stats``), so it costs the same on a
log of a million grasps as on an empty one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.logreader import LogReader


class Queries:
    """Read-only views of the grasp log, for one thread (opened on first use)."""

    def __init__(self, db_path: Path, busy_timeout_ms: int = 5000) -> None:
        self._reader = LogReader(db_path, busy_timeout_ms)

    def close(self) -> None:
        self._reader.close()

    def policies(self) -> list[dict[str, Any]]:
        return self._reader.policies()

    def policy(self, policy_id: str) -> dict[str, Any] | None:
        return self._reader.policy(policy_id)

    def condition(self, name: str) -> dict[str, Any] | None:
        return self._reader.condition(name)

    def events(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return self._reader.events(after_id, limit)

    def stats(self) -> list[dict[str, Any]]:
        """Grasps, successes, rate and mean decision time per (condition, policy, mode)."""
        return self._reader.stats()
