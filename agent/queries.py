"""Read-only queries for the command thread: its own SQLite connection and a stats cache.

Never used on the control thread. ``stats`` folds in only the grasps logged
since the previous call (one indexed range scan), so a flood of ``stats``
requests on a log of a million grasps costs one full scan, then almost nothing;
a table younger than ``max_age_s`` is served again without a query.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.grasplog import LogReader


class Queries:
    """Read-only views of the grasp log, for one thread (opened on first use)."""

    def __init__(self, db_path: Path, busy_timeout_ms: int = 5000, max_age_s: float = 0.1) -> None:
        self._reader = LogReader(db_path, busy_timeout_ms)
        self.max_age_s = max_age_s
        self._seen = 0
        self._agg: dict[tuple[str, str, str], list[Any]] = {}
        self._table: list[dict[str, Any]] = []
        self._at = -1e18

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
        now = time.monotonic()
        if now - self._at < self.max_age_s:
            return self._table
        top, rows = self._reader.stats_rows(self._seen)
        for cond, pol, mode, n, ok, decide, first in rows:
            acc = self._agg.setdefault((cond, pol, mode), [0, 0, 0.0, first])
            acc[0] += n
            acc[1] += ok
            acc[2] += decide
            acc[3] = min(acc[3], first)
        self._seen = top
        out = []
        for (cond, pol, mode), (n, ok, decide, _first) in sorted(
            self._agg.items(), key=lambda kv: kv[1][3]
        ):
            out.append(
                {
                    "condition": cond,
                    "policy": pol,
                    "mode": mode,
                    "grasps": n,
                    "successes": ok,
                    "success_rate": ok / n if n else None,
                    "mean_decide_ms": decide / n if n else None,
                }
            )
        self._table, self._at = out, now
        return out
