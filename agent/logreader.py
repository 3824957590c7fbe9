"""Read queries of the grasp log, and the read-only connection other threads use.

:class:`LogQueries` holds every read the agent makes (the writer inherits them);
:class:`LogReader` is a read-only connection (``mode=ro``, WAL readers never block the
writer) for one thread other than the control thread: commands, exports, validation.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.logrecords import decode_image


class LogQueries:
    """Read queries shared by the writer and the read-only connections."""

    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._conn().execute(sql, tuple(args))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def get_kv(self, key: str, default: Any = None) -> Any:
        row = self._conn().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def condition(self, name: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM conditions WHERE name = ?", [name])
        return rows[0] if rows else None

    def policy(self, policy_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM policies WHERE id = ?", [policy_id])
        return rows[0] if rows else None

    def policies(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT id, parent_id, condition_id, status, path, created_at, activated_at, reason "
            "FROM policies ORDER BY created_at"
        )

    def job(self, job_id: int) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", [job_id])
        return rows[0] if rows else None

    def job_ids(self, status: str) -> list[int]:
        """Ids of the jobs with this status, oldest first."""
        return [
            int(r["id"])
            for r in self._rows("SELECT id FROM jobs WHERE status = ? ORDER BY id", [status])
        ]

    def count_grasps(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM grasps").fetchone()[0])

    def last_grasp_id(self) -> int:
        return int(self._conn().execute("SELECT coalesce(max(id), 0) FROM grasps").fetchone()[0])

    def recent_outcomes(self, policy_id: str, condition_id: int, limit: int) -> list[bool]:
        """Success flags of a policy's latest serve/explore grasps in a condition, oldest first."""
        rows = (
            self._conn()
            .execute(
                "SELECT success FROM grasps WHERE policy_id = ? AND condition_id = ? "
                "AND mode != 'eval' ORDER BY id DESC LIMIT ?",
                (policy_id, condition_id, limit),
            )
            .fetchall()
        )
        return [bool(r[0]) for r in reversed(rows)]

    def jobs_of(self, condition_id: int, statuses: Sequence[str]) -> list[int]:
        """Ids of the condition's jobs whose status is one of ``statuses``."""
        marks = ",".join("?" for _ in statuses)
        rows = (
            self._conn()
            .execute(
                f"SELECT id FROM jobs WHERE condition_id = ? AND status IN ({marks}) ORDER BY id",
                (condition_id, *statuses),
            )
            .fetchall()
        )
        return [int(r[0]) for r in rows]

    def grasps_after(self, grasp_id: int) -> list[tuple[int, str, bool]]:
        """(id, policy, success) of the serve/explore grasps after row ``grasp_id``, in order."""
        rows = (
            self._conn()
            .execute(
                "SELECT id, policy_id, success FROM grasps WHERE id > ? AND mode != 'eval' "
                "ORDER BY id",
                (grasp_id,),
            )
            .fetchall()
        )
        return [(int(r[0]), str(r[1]), bool(r[2])) for r in rows]

    def recent_outcomes_any(self, policy_id: str, limit: int) -> list[bool]:
        """Success flags of a policy's latest serve/explore grasps in any condition."""
        rows = (
            self._conn()
            .execute(
                "SELECT success FROM grasps WHERE policy_id = ? AND mode != 'eval' "
                "ORDER BY id DESC LIMIT ?",
                (policy_id, limit),
            )
            .fetchall()
        )
        return [bool(r[0]) for r in reversed(rows)]

    def stats(self) -> list[dict[str, Any]]:
        """Grasps, successes, rate and mean decision time per (condition, policy, mode), in
        order of first grasp: read from the running totals (O(groups), any log size)."""
        rows = (
            self._conn()
            .execute(
                "SELECT c.name, s.policy_id, s.mode, s.grasps, s.successes, s.decide_ms "
                "FROM grasp_stats s JOIN conditions c ON c.id = s.condition_id ORDER BY s.first_id"
            )
            .fetchall()
        )
        return [
            {
                "condition": r[0],
                "policy": r[1],
                "mode": r[2],
                "grasps": r[3],
                "successes": int(r[4]),
                "success_rate": r[4] / r[3] if r[3] else None,
                "mean_decide_ms": r[5] / r[3] if r[3] else None,
            }
            for r in rows
        ]

    def events(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Events with id > ``after_id``, oldest first; ``data`` decoded."""
        rows = self._rows(
            "SELECT id, t, topic, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
            [after_id, limit],
        )
        for r in rows:
            r["data"] = json.loads(r["data"])
        return rows

    def export_rows(
        self, condition_id: int, modes: Sequence[str], after: int = 0
    ) -> list[tuple[Any, ...]]:
        """Transitions (with their grasp's fields) of a condition's grasps in ``modes`` after
        grasp row ``after``."""
        marks = ",".join("?" for _ in modes)
        return (
            self._conn()
            .execute(
                "SELECT t.grasp_id, t.step, t.image, t.action, t.reward, t.done, g.success, "
                "g.policy_id, g.t_start, g.t_end, g.mode, g.reward, g.q, g.sensed_by "
                "FROM transitions t JOIN grasps g ON g.id = t.grasp_id "
                f"WHERE g.condition_id = ? AND g.mode IN ({marks}) AND t.image IS NOT NULL "
                "AND g.id > ? ORDER BY t.grasp_id, t.step",
                (condition_id, *modes, after),
            )
            .fetchall()
        )

    def recent_images(self, condition_id: int, limit: int) -> list[npt.NDArray[np.uint8]]:
        """The latest ``limit`` stored decision images of a condition, decoded (RGB uint8)."""
        rows = (
            self._conn()
            .execute(
                "SELECT t.image FROM transitions t JOIN grasps g ON g.id = t.grasp_id "
                "WHERE g.condition_id = ? AND t.image IS NOT NULL ORDER BY t.id DESC LIMIT ?",
                (condition_id, limit),
            )
            .fetchall()
        )
        return [decode_image(r[0]) for r in rows]


class LogReader(LogQueries):
    """A read-only connection to the grasp log for one thread other than the writer's.

    Opened lazily on first use in the thread that uses it (``mode=ro``; WAL
    readers never block the writer), closed with :meth:`close`.
    """

    def __init__(self, path: Path, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._c: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._c is None:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._c = sqlite3.connect(uri, uri=True, isolation_level=None)
            self._c.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        return self._c

    def close(self) -> None:
        if self._c is not None:
            self._c.close()
            self._c = None

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
