"""The grasp log: SQLite through sqlite-utils, WAL + synchronous=FULL, versioned schema.

Tables: ``conditions``, ``policies``, ``grasps``, ``transitions`` (images
encoded by OpenCV), ``jobs``, ``events`` (append-only, enforced by triggers)
and ``kv`` (small daemon state). Every write is one ``BEGIN IMMEDIATE``
transaction with a busy timeout, committed before the call returns, so a grasp
is durable before the next one starts; writes nest (an inner ``write()`` joins
the outer transaction, so one lifecycle step commits all its rows at once).
Readable with the ``sqlite-utils`` CLI.

:class:`GraspLog` is the one writer, used from one thread (the control
thread). :class:`LogReader` is a read-only connection for any other thread
(commands, exports, validation probes), one per thread. All the agent's SQL
lives in this module and its neighbours: the schema in :mod:`agent.logschema`, the
rows in :mod:`agent.logrecords`, the reads in :mod:`agent.logreader`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.logreader import LogQueries, LogReader
from agent.logrecords import GraspRecord, encode_image
from agent.logschema import MIGRATIONS


class GraspLog(LogQueries):
    """The daemon's SQLite database (the one writer). Open with :meth:`open`, close with
    :meth:`close`; use from one thread."""

    def __init__(self, path: Path, busy_timeout_ms: int = 5000, image_format: str = "png") -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.image_format = image_format
        self._db: sqlite_utils.Database | None = None
        self._depth = 0
        self._page_cap: tuple[int | None] | None = None
        self._default_max_pages = 0

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> GraspLog:
        """Open (creating if needed), set WAL + synchronous=FULL, migrate to the current schema."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=True)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        self._db = sqlite_utils.Database(conn)
        self._db.enable_wal()
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._default_max_pages = int(conn.execute("PRAGMA max_page_count").fetchone()[0])
        self._migrate()
        return self

    def close(self) -> None:
        """Checkpoint and close. Idempotent."""
        if self._db is not None:
            try:
                self._db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # e.g. disk full: the WAL stays and is replayed at the next open
            finally:
                self._db.conn.close()
                self._db = None

    def __enter__(self) -> GraspLog:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("grasp log is not open")
        return self._db

    def _conn(self) -> sqlite3.Connection:
        return self.db.conn

    def reader(self) -> LogReader:
        """A new read-only connection to the same file, for another thread (not opened yet)."""
        return LogReader(self.path, self.busy_timeout_ms)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction, committed on exit, rolled back on error.

        Nested calls join the outermost transaction. SQLite rolls back by itself
        on SQLITE_FULL; the error (see :func:`is_disk_full`) reaches the caller.
        """
        conn = self.db.conn
        if self._depth:
            self._depth += 1
            try:
                yield conn
            finally:
                self._depth -= 1
            return
        self._apply_page_cap(conn)
        conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    def cap_pages(self, extra: int | None) -> None:
        """Fault-injection seam (tests, bench): from the next write, cap the file at its size
        plus ``extra`` pages (writes past it fail with SQLITE_FULL); None lifts the cap.
        Thread-safe: it only records the request."""
        self._page_cap = (extra,)

    def _apply_page_cap(self, conn: sqlite3.Connection) -> None:
        req, self._page_cap = self._page_cap, None
        if req is None:
            return
        (extra,) = req
        if extra is None:
            conn.execute(f"PRAGMA max_page_count = {self._default_max_pages}")
        else:
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            conn.execute(f"PRAGMA max_page_count = {pages + int(extra)}")

    def schema_version(self) -> int:
        return int(self.db.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version()
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path}: schema version {current} is newer than this agent "
                f"({len(MIGRATIONS)})"
            )
        for version in range(current, len(MIGRATIONS)):
            with self.write() as conn:
                MIGRATIONS[version](self.db)
                conn.execute(f"PRAGMA user_version = {version + 1}")

    # -- writes ----------------------------------------------------------------------------
    def add_condition(
        self,
        name: str,
        note: str = "",
        source: str = "operator",
        policy_id: str | None = None,
        params: dict[str, float] | None = None,
    ) -> int:
        """Insert a condition; raises ValueError if the name is taken."""
        try:
            with self.write() as conn:
                cur = conn.execute(
                    "INSERT INTO conditions (name, note, source, created_at, policy_id, params) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (name, note, source, time.time(), policy_id, json.dumps(params or {})),
                )
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"condition {name!r} already exists") from exc
        return int(cur.lastrowid or 0)

    def upsert_policy(
        self,
        policy_id: str,
        path: str,
        status: str,
        parent_id: str | None = None,
        condition_id: int | None = None,
        meta: dict[str, Any] | None = None,
        reason: str = "",
    ) -> None:
        """Record a policy, or update the status/reason of a known one."""
        now = time.time()
        with self.write() as conn:
            row = conn.execute("SELECT id FROM policies WHERE id = ?", (policy_id,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO policies (id, parent_id, condition_id, status, path, created_at, "
                    "activated_at, reason, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        policy_id,
                        parent_id,
                        condition_id,
                        status,
                        path,
                        now,
                        now if status == "active" else None,
                        reason,
                        json.dumps(meta or {}),
                    ),
                )
            else:
                conn.execute(
                    "UPDATE policies SET status = ?, reason = ?, activated_at = "
                    "CASE WHEN ? = 'active' THEN ? ELSE activated_at END WHERE id = ?",
                    (status, reason, status, now, policy_id),
                )

    def activate_policy(self, policy_id: str, reason: str = "") -> None:
        """Make one policy active and retire the previously active one, atomically."""
        now = time.time()
        with self.write() as conn:
            conn.execute(
                "UPDATE policies SET status = 'retired' WHERE status = 'active' AND id != ?",
                (policy_id,),
            )
            n = conn.execute(
                "UPDATE policies SET status = 'active', activated_at = ?, reason = ? WHERE id = ?",
                (now, reason, policy_id),
            ).rowcount
            if n != 1:
                raise KeyError(f"unknown policy {policy_id}")

    def log_grasp(self, g: GraspRecord, store_images: bool = True) -> int:
        """Write a grasp and its transitions in one committed transaction; returns its id."""
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO grasps (t_start, t_end, condition_id, policy_id, mode, success, "
                "reward, q, decide_ms, execute_ms, sensed_by, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    g.t_start,
                    g.t_end,
                    g.condition_id,
                    g.policy_id,
                    g.mode,
                    int(g.success),
                    g.reward,
                    g.q,
                    g.decide_ms,
                    g.execute_ms,
                    g.sensed_by,
                    json.dumps(g.detail),
                ),
            )
            gid = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO grasp_stats (condition_id, policy_id, mode, grasps, successes, "
                "decide_ms, first_id) VALUES (?, ?, ?, 1, ?, ?, ?) "
                "ON CONFLICT (condition_id, policy_id, mode) DO UPDATE SET "
                "grasps = grasps + 1, successes = successes + excluded.successes, "
                "decide_ms = decide_ms + excluded.decide_ms",
                (g.condition_id, g.policy_id, g.mode, int(g.success), g.decide_ms, gid),
            )
            for tr in g.transitions:
                img = (
                    encode_image(tr.image, self.image_format)
                    if store_images and tr.image is not None
                    else None
                )
                conn.execute(
                    "INSERT INTO transitions (grasp_id, step, image, image_format, action, "
                    "reward, done) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        gid,
                        tr.step,
                        img,
                        self.image_format if img else None,
                        json.dumps([float(a) for a in tr.action]),
                        tr.reward,
                        int(tr.done),
                    ),
                )
        return gid

    def add_event(self, topic: str, data: dict[str, Any], t: float | None = None) -> int:
        """Append one event."""
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO events (t, topic, data) VALUES (?, ?, ?)",
                (time.time() if t is None else t, topic, json.dumps(data, default=str)),
            )
        return int(cur.lastrowid or 0)

    def add_job(self, condition_id: int, parent_policy_id: str, export_path: str) -> int:
        """Record a queued fine-tune job."""
        now = time.time()
        with self.write() as conn:
            cur = conn.execute(
                "INSERT INTO jobs (condition_id, parent_policy_id, status, created_at, updated_at, "
                "export_path, detail) VALUES (?, ?, 'queued', ?, ?, ?, '{}')",
                (condition_id, parent_policy_id, now, now, export_path),
            )
        return int(cur.lastrowid or 0)

    def update_job(
        self,
        job_id: int,
        status: str,
        result_policy_id: str | None = None,
        detail: dict[str, Any] | None = None,
        export_path: str | None = None,
    ) -> None:
        """Set a job's status (and, when given, its result, detail and export path)."""
        with self.write() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, updated_at = ?, "
                "result_policy_id = COALESCE(?, result_policy_id), "
                "detail = COALESCE(?, detail), export_path = COALESCE(?, export_path) "
                "WHERE id = ?",
                (
                    status,
                    time.time(),
                    result_policy_id,
                    None if detail is None else json.dumps(detail, default=str),
                    export_path,
                    job_id,
                ),
            )

    def set_kv(self, key: str, value: Any) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )
