"""The grasp log's schema: its migrations, versioned by ``PRAGMA user_version``.

Migration i takes the schema from version i to i + 1; :class:`agent.grasplog.GraspLog`
applies the missing ones when it opens a log, in one transaction each. Tables:
``conditions``, ``policies``, ``grasps``, ``transitions``, ``jobs``, ``events``
(append-only, enforced by triggers), ``kv``, and ``grasp_stats`` (running totals).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

SCHEMA_VERSION = 3


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
    db.execute(FOLD_STATS, (0,))


FOLD_STATS = (
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
