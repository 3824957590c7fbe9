"""A big grasp log, fast: synthetic grasps appended in bulk for query and flood measurements."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from agent.grasplog import GraspLog
from agent.logschema import FOLD_STATS


def bulk_insert_grasps(
    log: GraspLog,
    n: int,
    condition_id: int,
    policy_id: str,
    p_success: float = 0.8,
    seed: int = 0,
    chunk: int = 50_000,
) -> None:
    """Append ``n`` synthetic served grasps (no transitions, no images) to an open ``log``,
    ``chunk`` per transaction, folding each chunk into the running stats as the daemon's
    own inserts do."""
    rng = np.random.default_rng(seed)
    t0 = time.time()
    done = 0
    after = log.last_grasp_id()
    while done < n:
        k = min(chunk, n - done)
        ok = rng.random(k) < p_success
        rows: Iterable[tuple[Any, ...]] = (
            (t0, t0, condition_id, policy_id, "serve", int(s), float(s), 0.5, 2.0, 5.0, "bulk")
            for s in ok
        )
        with log.write() as conn:
            conn.executemany(
                "INSERT INTO grasps (t_start, t_end, condition_id, policy_id, mode, success, "
                "reward, q, decide_ms, execute_ms, sensed_by, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}')",
                rows,
            )
            conn.execute(FOLD_STATS, (after,))
        after = log.last_grasp_id()
        done += k
