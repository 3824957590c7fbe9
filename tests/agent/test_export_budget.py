"""The exports' disk budget (``agent.exports_budget_mb``): beyond it the oldest exports of
ended jobs are dropped, never one a live job still needs (:mod:`agent.exporter`)."""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.exporter import ExportDone, Exporter, OnDisk, exports_on_disk, over_budget
from agent.grasplog import GraspLog
from agent.jobs import EXPORT_NOT_NEEDED
from agent.logrecords import GraspRecord, TransitionRecord
from agent.spec import DEFAULT_SPEC
from testkit.daemon import Running, query
from testkit.net import wait_for

MB = 1 << 20


def on_disk(*jobs: int, size: int = 100) -> list[OnDisk]:
    return [OnDisk(j, Path(f"job-{j:06d}-c"), size) for j in jobs]


def test_over_budget_drops_the_oldest_ended_exports_until_the_rest_fit() -> None:
    live = {2, 5}
    drop = over_budget(on_disk(5, 3, 1, 4, 2), 250, lambda j: j in live)
    assert [e.job for e in drop] == [1, 3, 4]  # oldest first, past the live job 2
    assert over_budget(on_disk(1, 2), 200, lambda j: False) == []  # within the budget
    # live exports alone over the budget: they stay, and nothing else is left to drop
    assert over_budget(on_disk(1, 2), 10, lambda j: True) == []


def fake_export(root: Path, job: int, nbytes: int) -> Path:
    d = root / f"job-{job:06d}-old"
    d.mkdir(parents=True)
    (d / "index.json").write_text(json.dumps({"format": "robot-agent-dataset"}))
    (d / "images.npy").write_bytes(b"\0" * nbytes)
    return d


def grasp(cid: int, i: int) -> GraspRecord:
    img = np.full((64, 64, 3), i, np.uint8)
    return GraspRecord(
        t_start=1.0,
        t_end=2.0,
        condition_id=cid,
        policy_id="p",
        mode="explore",
        success=True,
        reward=1.0,
        q=0.5,
        decide_ms=1.0,
        execute_ms=2.0,
        sensed_by="fake",
        detail={},
        transitions=(TransitionRecord(0, img, [0.1, -0.2, 0.3], 1.0, True),),
    )


def test_exports_beyond_the_budget_are_trimmed_oldest_first_while_a_live_jobs_export_survives(
    tmp_path: Path,
) -> None:
    root = tmp_path / "exports"
    with GraspLog(tmp_path / "g.db") as log:
        cid = log.add_condition("glare")
        log.upsert_policy("p", "/x", "active")
        for i in range(3):
            log.log_grasp(grasp(cid, i))
        ids = [log.add_job(cid, "p", "") for _ in range(4)]  # jobs 1..4
        log.update_job(ids[0], "done")
        log.update_job(ids[1], "waiting")  # the trainer is away: its export is still needed
        log.update_job(ids[2], "cancelled")
    old = {j: fake_export(root, j, MB) for j in (1, 2, 3)}
    old[9] = fake_export(root, 9, MB)  # no row at all (an orphan): droppable
    notes = root / "notes"
    notes.mkdir()
    (notes / "big.bin").write_bytes(b"\0" * (3 * MB))  # not an export: never touched
    done: queue.Queue[ExportDone] = queue.Queue()
    budget = 5 * MB // 2
    ex = Exporter(
        tmp_path / "g.db",
        root,
        DEFAULT_SPEC,
        done.put,
        budget_bytes=budget,
        ended=EXPORT_NOT_NEEDED,
    )
    ex.start()
    try:
        ex.submit(4, "glare")
        got = done.get(timeout=30)
    finally:
        ex.close()
    assert got.error == "" and got.path is not None and got.path.is_dir()
    assert [e.job for e in got.dropped] == [1, 3]  # oldest ended first, then enough
    assert not old[1].exists() and not old[3].exists()
    assert old[2].is_dir()  # a live job's export survives
    assert old[9].is_dir()  # the rest fits: nothing more is dropped
    assert notes.is_dir()
    assert sum(e.bytes for e in exports_on_disk(root)) <= budget


@pytest.mark.integration  # the daemon in a thread
def test_dropped_exports_are_logged_and_published(start_daemon: Any, tmp_path: Path) -> None:
    root = tmp_path / "data" / "exports"
    older, newer = fake_export(root, 90, 700_000), fake_export(root, 91, 700_000)
    r: Running = start_daemon(
        agent={"exports_budget_mb": 1},
        lifecycle={"exploration_grasps": 10},
        detector={"enabled": False},
    )
    r.wait_for(lambda s: s["grasps"] >= 2)
    assert r.ctl("mark-condition", name="glare")["ok"]
    r.wait_for(lambda s: s["phase"] == "training")

    def dropped() -> list[dict[str, Any]]:
        rows = query(r.daemon.db_path, "SELECT data FROM events WHERE topic = 'agent.storage'")
        return [json.loads(x["data"]) for x in rows]

    wait_for(lambda: bool(dropped()), 20, "the agent.storage event of the dropped export")
    (event,) = dropped()
    assert event["status"] == "exports_dropped" and event["job"] == 1
    assert [d["job"] for d in event["dropped"]] == [90]
    assert event["dropped"][0]["export"] == str(older)
    assert not older.exists() and newer.is_dir()
