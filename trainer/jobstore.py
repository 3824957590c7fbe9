"""The trainer's job table (SQLite) and its directories on disk.

Layout under the service's data directory::

    jobs.db                         jobs, received chunks, finished files, counters
    bundles/<id>/                   every policy bundle the trainer holds (content-addressed)
    jobs/<key>/export/<file>        an upload in progress (``<file>.part`` until verified)
    jobs/<key>/parent/<file>        the parent bundle, when the trainer did not have it
    jobs/<key>/train/               the fine-tune run directory (its checkpoints: resumable)
    lineages/<agent>/<key>/data/    a job's data as an episode store, kept for the lineage
    lineages/<agent>/<key>/source.json   {key, agent_job, condition, grasps}

A row is committed (``synchronous=FULL``) before the service replies to the
request that caused it, and a chunk is recorded only after its bytes are
fsynced, so what the table says the trainer has survives a crash.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from agent.jobwire import Manifest
from trainer.jobs import Job, JobState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    agent_job INTEGER NOT NULL,
    condition TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    state TEXT NOT NULL,
    seq INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    bundle_id TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    export_manifest TEXT NOT NULL,
    parent_manifest TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_agent ON jobs(agent, state);
CREATE TABLE IF NOT EXISTS chunks (
    key TEXT NOT NULL, blob TEXT NOT NULL, file TEXT NOT NULL, idx INTEGER NOT NULL,
    PRIMARY KEY (key, blob, file, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files_done (
    key TEXT NOT NULL, blob TEXT NOT NULL, file TEXT NOT NULL,
    PRIMARY KEY (key, blob, file)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_MOVING = ("state", "seq", "attempts", "outcome", "bundle_id", "detail")
"""The columns of a job that change as it moves (what :meth:`JobStore.save` writes)."""
_JOB_COLS = ", ".join(("key", "agent", "agent_job", "condition", "parent_id", *_MOVING))
_SET_MOVING = ", ".join(f"{c}=?" for c in _MOVING)


def _moving(job: Job) -> tuple[Any, ...]:
    """The values of :data:`_MOVING`, in that order."""
    return (job.state.value, job.seq, job.attempts, job.outcome, job.bundle_id, job.detail)


def _job(row: tuple[Any, ...]) -> Job:
    key, agent, agent_job, condition, parent_id, state, seq, attempts, outcome, bid, detail = row
    return Job(
        key=key,
        agent=agent,
        agent_job=int(agent_job),
        condition=condition,
        parent_id=parent_id,
        state=JobState(state),
        seq=None if seq is None else int(seq),
        attempts=int(attempts),
        outcome=outcome,
        bundle_id=bid,
        detail=detail,
    )


class JobStore:
    """SQLite job table plus the directory layout; used by one thread at a time (the loop)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> JobStore:
        for sub in ("bundles", "jobs", "lineages"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.root / "jobs.db", isolation_level=None, timeout=10.0, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("JobStore is not open")
        return self._conn

    # -- jobs -------------------------------------------------------------------------------
    def add(self, job: Job, export: Manifest, parent: Manifest | None) -> None:
        """Insert a new job row (committed on return)."""
        now = time.time()
        self.conn.execute(
            f"INSERT INTO jobs ({_JOB_COLS}, export_manifest, parent_manifest, created_at, "
            "updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                job.key,
                job.agent,
                job.agent_job,
                job.condition,
                job.parent_id,
                *_moving(job),
                json.dumps(export.to_json()),
                None if parent is None else json.dumps(parent.to_json()),
                now,
                now,
            ),
        )

    def save(self, job: Job) -> None:
        """Update a job row (committed on return); stamps start and finish times."""
        now = time.time()
        started = now if job.state is JobState.TRAINING else None
        finished = (
            now
            if job.state
            in (JobState.DONE, JobState.NO_IMPROVEMENT, JobState.FAILED, JobState.CANCELLED)
            else None
        )
        self.conn.execute(
            f"UPDATE jobs SET {_SET_MOVING}, updated_at=?, started_at=COALESCE(?, started_at), "
            "finished_at=COALESCE(?, finished_at) WHERE key=?",
            (*_moving(job), now, started, finished, job.key),
        )

    def get(self, key: str) -> Job | None:
        row = self.conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE key=?", (key,)).fetchone()
        return None if row is None else _job(row)

    def jobs(self, agent: str | None = None) -> list[Job]:
        """Every job (of ``agent``), oldest first."""
        where, args = ("WHERE agent=?", (agent,)) if agent else ("", ())
        rows = self.conn.execute(
            f"SELECT {_JOB_COLS} FROM jobs {where} ORDER BY created_at, key", args
        ).fetchall()
        return [_job(r) for r in rows]

    def rows(self) -> list[dict[str, Any]]:
        """Every job as a JSON-ready dict with its timestamps (for the ``jobs`` request)."""
        cur = self.conn.execute(
            f"SELECT {_JOB_COLS}, created_at, started_at, finished_at FROM jobs "
            "ORDER BY created_at, key"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def manifests(self, key: str) -> tuple[Manifest, Manifest | None]:
        """The export manifest and the parent manifest (None if the parent was not needed)."""
        row = self.conn.execute(
            "SELECT export_manifest, parent_manifest FROM jobs WHERE key=?", (key,)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        big = 1 << 62
        export = Manifest.from_json(json.loads(row[0]), max_chunk_bytes=big, max_total_bytes=big)
        parent = (
            None
            if row[1] is None
            else Manifest.from_json(json.loads(row[1]), max_chunk_bytes=big, max_total_bytes=big)
        )
        return export, parent

    def drop_parent_manifest(self, key: str) -> None:
        """The trainer got the parent bundle another way: this job no longer uploads it."""
        self.conn.execute("UPDATE jobs SET parent_manifest=NULL WHERE key=?", (key,))

    def stale_uploads(self, older_than: float) -> list[Job]:
        """Jobs still receiving whose row has not changed since ``older_than`` (epoch s)."""
        rows = self.conn.execute(
            f"SELECT {_JOB_COLS} FROM jobs WHERE state=? AND updated_at < ?",
            (JobState.RECEIVING.value, older_than),
        ).fetchall()
        return [_job(r) for r in rows]

    def next_seq(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()
        return int(row[0])

    def next_queued(self) -> Job | None:
        """The queued job with the lowest seq (FIFO)."""
        row = self.conn.execute(
            f"SELECT {_JOB_COLS} FROM jobs WHERE state=? ORDER BY seq LIMIT 1",
            (JobState.QUEUED.value,),
        ).fetchone()
        return None if row is None else _job(row)

    # -- chunks -----------------------------------------------------------------------------
    def have(self, key: str, blob: str) -> dict[str, set[int]]:
        """Chunk indices held per file of one upload (finished files count as whole)."""
        out: dict[str, set[int]] = {}
        for file, idx in self.conn.execute(
            "SELECT file, idx FROM chunks WHERE key=? AND blob=?", (key, blob)
        ):
            out.setdefault(file, set()).add(int(idx))
        return out

    def has_chunk(self, key: str, blob: str, file: str, idx: int) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM chunks WHERE key=? AND blob=? AND file=? AND idx=?",
            (key, blob, file, idx),
        ).fetchone()
        return row is not None

    def chunk_count(self, key: str, blob: str, file: str) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM chunks WHERE key=? AND blob=? AND file=?", (key, blob, file)
        ).fetchone()
        return int(row[0])

    def record_chunk(self, key: str, blob: str, file: str, idx: int) -> None:
        """Record a chunk whose bytes are already fsynced (and mark the job active now)."""
        c = self.conn
        c.execute("BEGIN")
        try:
            c.execute(
                "INSERT OR IGNORE INTO chunks (key, blob, file, idx) VALUES (?,?,?,?)",
                (key, blob, file, idx),
            )
            c.execute("UPDATE jobs SET updated_at=? WHERE key=?", (time.time(), key))
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def clear_file(self, key: str, blob: str, file: str) -> None:
        """Forget every chunk of a file (its whole checksum failed)."""
        self.conn.execute("DELETE FROM chunks WHERE key=? AND blob=? AND file=?", (key, blob, file))

    def mark_file_done(self, key: str, blob: str, file: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO files_done (key, blob, file) VALUES (?,?,?)", (key, blob, file)
        )

    def files_done(self, key: str, blob: str) -> set[str]:
        return {
            str(r[0])
            for r in self.conn.execute(
                "SELECT file FROM files_done WHERE key=? AND blob=?", (key, blob)
            )
        }

    def forget_chunks(self, key: str) -> None:
        """Drop the chunk bookkeeping of a job whose upload is no longer needed."""
        self.conn.execute("DELETE FROM chunks WHERE key=?", (key,))

    # -- counters ---------------------------------------------------------------------------
    def count(self, name: str, inc: int = 1) -> None:
        self.conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, inc),
        )

    def counters(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.conn.execute("SELECT name, value FROM counters")}

    # -- paths ------------------------------------------------------------------------------
    def incoming_dir(self, key: str, blob: str) -> Path:
        return self.root / "jobs" / key / blob

    def job_dir(self, key: str) -> Path:
        return self.root / "jobs" / key

    def train_dir(self, key: str) -> Path:
        return self.root / "jobs" / key / "train"

    def bundle_dir(self, bundle_id: str) -> Path:
        return self.root / "bundles" / bundle_id

    def lineage_root(self, agent: str) -> Path:
        return self.root / "lineages" / agent
