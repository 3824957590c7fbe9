"""Read a run's grasps and events from the agent's grasp log, read-only (the adapter of
:mod:`trainer.demo.timeline`; the schema is :mod:`agent.grasplog`'s)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from trainer.demo.timeline import Event, Grasp


def read_run(db: Path, busy_timeout_ms: int = 5000) -> tuple[list[Grasp], list[Event]]:
    """Every grasp (log order) and every event of the grasp log at ``db``, in one read
    transaction of a read-only connection (``mode=ro``): safe beside the running daemon."""
    uri = f"{Path(db).resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("BEGIN")
        rows = conn.execute("SELECT t_end, success, policy_id, mode FROM grasps ORDER BY id")
        grasps = [
            Grasp(i, float(t), bool(ok), str(pol), str(mode))
            for i, (t, ok, pol, mode) in enumerate(rows.fetchall())
        ]
        events = []
        for t, topic, data in conn.execute("SELECT t, topic, data FROM events ORDER BY id"):
            try:
                payload = json.loads(data)
            except ValueError:
                payload = {"value": data}
            events.append(Event(float(t), str(topic), payload if isinstance(payload, dict) else {}))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return grasps, events
