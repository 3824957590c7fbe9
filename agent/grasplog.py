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
lives in this module.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import sqlite_utils

SCHEMA_VERSION = 3


@dataclass(frozen=True)
class TransitionRecord:
    """One step of a grasp attempt as logged."""

    step: int
    """0-based step within the attempt."""
    image: npt.NDArray[np.uint8] | None
    """The RGB image the decision saw (None if images are not stored)."""
    action: Sequence[float]
    """The normalised action taken."""
    reward: float
    """Reward of the step."""
    done: bool
    """Last step of the attempt."""


@dataclass(frozen=True)
class GraspRecord:
    """One grasp attempt as logged."""

    t_start: float
    """Wall-clock start (unix seconds)."""
    t_end: float
    """Wall-clock end."""
    condition_id: int
    """Condition the grasp ran in."""
    policy_id: str
    """Policy that chose the action."""
    mode: str
    """"serve", "explore" or "eval"."""
    success: bool
    """Object lifted and held."""
    reward: float
    """Sum of step rewards."""
    q: float
    """Q of the chosen action (of the first decision)."""
    decide_ms: float
    """Total decision time."""
    execute_ms: float
    """Total time in driver.execute."""
    sensed_by: str
    """How success was sensed."""
    detail: dict[str, float]
    """Driver figures."""
    transitions: tuple[TransitionRecord, ...]
    """Per-step records."""


def _m1(db: sqlite_utils.Database) -> None:
    db.table("conditions").create(
        {
            "id": int,
            "name": str,
            "note": str,
            "source": str,
            "created_at": float,
            "policy_id": str,
            "params": str,
        },
        pk="id",
        not_null={"name", "created_at"},
    )
    db.table("conditions").create_index(["name"], unique=True)
    db.table("policies").create(
        {
            "id": str,
            "parent_id": str,
            "condition_id": int,
            "status": str,
            "path": str,
            "created_at": float,
            "activated_at": float,
            "reason": str,
            "meta": str,
        },
        pk="id",
        not_null={"status", "path", "created_at"},
    )
    db.table("grasps").create(
        {
            "id": int,
            "t_start": float,
            "t_end": float,
            "condition_id": int,
            "policy_id": str,
            "mode": str,
            "success": int,
            "reward": float,
            "q": float,
            "decide_ms": float,
            "execute_ms": float,
            "sensed_by": str,
            "detail": str,
        },
        pk="id",
        foreign_keys=[("condition_id", "conditions", "id"), ("policy_id", "policies", "id")],
    )
    db.table("grasps").create_index(["condition_id", "policy_id"])
    db.table("transitions").create(
        {
            "id": int,
            "grasp_id": int,
            "step": int,
            "image": bytes,
            "image_format": str,
            "action": str,
            "reward": float,
            "done": int,
        },
        pk="id",
        foreign_keys=[("grasp_id", "grasps", "id")],
    )
    db.table("transitions").create_index(["grasp_id", "step"], unique=True)
    db.table("jobs").create(
        {
            "id": int,
            "condition_id": int,
            "parent_policy_id": str,
            "status": str,
            "created_at": float,
            "updated_at": float,
            "export_path": str,
            "result_policy_id": str,
            "detail": str,
        },
        pk="id",
        foreign_keys=[("condition_id", "conditions", "id")],
    )
    db.table("events").create({"id": int, "t": float, "topic": str, "data": str}, pk="id")
    db.execute(
        "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
        "BEGIN SELECT RAISE(ABORT, 'events is append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
        "BEGIN SELECT RAISE(ABORT, 'events is append-only'); END"
    )


def _m2(db: sqlite_utils.Database) -> None:
    db.table("kv").create({"key": str, "value": str}, pk="key")


def _m3(db: sqlite_utils.Database) -> None:
    """Running totals per (condition, policy, mode), kept by log_grasp: stats in O(groups)."""
    db.execute(
        "CREATE TABLE grasp_stats (condition_id INTEGER NOT NULL, policy_id TEXT NOT NULL, "
        "mode TEXT NOT NULL, grasps INTEGER NOT NULL, successes INTEGER NOT NULL, "
        "decide_ms REAL NOT NULL, first_id INTEGER NOT NULL, "
        "PRIMARY KEY (condition_id, policy_id, mode))"
    )
    db.execute(_FOLD_STATS, (0,))


_FOLD_STATS = (
    "INSERT INTO grasp_stats (condition_id, policy_id, mode, grasps, successes, decide_ms, "
    "first_id) SELECT condition_id, policy_id, mode, count(*), total(success), "
    "total(decide_ms), min(id) FROM grasps WHERE id > ? GROUP BY condition_id, policy_id, mode "
    "ON CONFLICT (condition_id, policy_id, mode) DO UPDATE SET "
    "grasps = grasps + excluded.grasps, successes = successes + excluded.successes, "
    "decide_ms = decide_ms + excluded.decide_ms"
)
"""Fold the grasps after an id into grasp_stats (migration and bulk inserts)."""


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (_m1, _m2, _m3)
"""Migration i takes the schema from version i to i + 1 (PRAGMA user_version)."""


def encode_image(image: npt.NDArray[np.uint8], fmt: str) -> bytes:
    """Encode an RGB image with OpenCV (stored as a normal, viewable PNG/JPEG)."""
    ok, buf = cv2.imencode("." + fmt, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return bytes(buf.tobytes())


def decode_image(data: bytes) -> npt.NDArray[np.uint8]:
    """Decode :func:`encode_image` output back to an RGB uint8 array."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("OpenCV could not decode an image")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def is_disk_full(exc: BaseException) -> bool:
    """True when a SQLite error means the disk (or the page cap) is full."""
    return (
        isinstance(exc, sqlite3.OperationalError)
        and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    )


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

    def condition_by_id(self, cid: int) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM conditions WHERE id = ?", [cid])
        return rows[0] if rows else None

    def policy(self, policy_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM policies WHERE id = ?", [policy_id])
        return rows[0] if rows else None

    def policies(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT id, parent_id, condition_id, status, path, created_at, activated_at, reason "
            "FROM policies ORDER BY created_at"
        )

    def active_policy(self) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT * FROM policies WHERE status = 'active' ORDER BY activated_at DESC LIMIT 1"
        )
        return rows[0] if rows else None

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

    def outcomes_since(self, policy_id: str, condition_id: int, after_id: int) -> list[bool]:
        """Success flags of a policy's serve/explore grasps in a condition after a grasp id."""
        rows = (
            self._conn()
            .execute(
                "SELECT success FROM grasps WHERE policy_id = ? AND condition_id = ? "
                "AND mode != 'eval' AND id > ? ORDER BY id",
                (policy_id, condition_id, after_id),
            )
            .fetchall()
        )
        return [bool(r[0]) for r in rows]

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

    def export_rows(self, condition_id: int, modes: Sequence[str]) -> list[tuple[Any, ...]]:
        """Transitions (with their grasp's fields) of a condition's grasps in ``modes``."""
        marks = ",".join("?" for _ in modes)
        return (
            self._conn()
            .execute(
                "SELECT t.grasp_id, t.step, t.image, t.action, t.reward, t.done, g.success, "
                "g.policy_id, g.t_start, g.t_end, g.mode, g.reward, g.q, g.sensed_by "
                "FROM transitions t JOIN grasps g ON g.id = t.grasp_id "
                f"WHERE g.condition_id = ? AND g.mode IN ({marks}) AND t.image IS NOT NULL "
                "ORDER BY t.grasp_id, t.step",
                (condition_id, *modes),
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

    def bulk_insert_grasps(
        self,
        n: int,
        condition_id: int,
        policy_id: str,
        p_success: float = 0.8,
        seed: int = 0,
        chunk: int = 50_000,
    ) -> None:
        """Append ``n`` synthetic grasps without transitions, fast (tests and benches only:
        builds a big log for query and flood measurements)."""
        rng = np.random.default_rng(seed)
        t0 = time.time()
        done = 0
        after = self.last_grasp_id()
        while done < n:
            k = min(chunk, n - done)
            ok = rng.random(k) < p_success
            rows: Iterable[tuple[Any, ...]] = (
                (t0, t0, condition_id, policy_id, "serve", int(s), float(s), 0.5, 2.0, 5.0, "bulk")
                for s in ok
            )
            with self.write() as conn:
                conn.executemany(
                    "INSERT INTO grasps (t_start, t_end, condition_id, policy_id, mode, success, "
                    "reward, q, decide_ms, execute_ms, sensed_by, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}')",
                    rows,
                )
                conn.execute(_FOLD_STATS, (after,))
            after = self.last_grasp_id()
            done += k


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
