"""The agent process SIGKILLed mid-race and mid-round: it resumes the race (and the rounds)
without losing a grasp and never serves an eliminated arm again; the trainer SIGKILLed
during the second round's job: the job resumes and completes, and its child races.

A real ``robot-agent run`` process on a fake robot whose success rate is a file (the world
outlives the agent), a real ``robot-trainer serve`` process running the real recipe on the
tiny network (its gate set so that every job returns a child: the race, not the held-out
score, decides), real sockets and files. The world drops from 0.9 to 0.5 and an operator
marks the change; the child races its parent (both at 0.5 on this robot: the parent keeps
serving, at the race's cap or with the child eliminated), so the level stays below the
level before the change and a second round follows.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.ctl import request
from testkit.cell import Cell
from testkit.trainer import (
    TINY_FINETUNE,
    TrainerProcess,
    free_port,
    make_parent,
    write_service_config,
)

pytestmark = pytest.mark.timeout(240)

ALWAYS_A_CHILD: dict[str, Any] = {
    **TINY_FINETUNE,
    "max_steps": 40,
    "patience": 100,
    "gate": "race",
    "se_margin": 1000.0,
    "race_min_auc": 0.0,
    "prior_tolerance": 1.0,
}
"""The tiny recipe with a gate that never calls a candidate clearly worse (40 steps, a few
seconds: long enough to kill the trainer mid-job)."""


def _db(cell: Cell) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{cell.db}?mode=ro", uri=True, timeout=10)


def _until(
    cell: Cell, pred: Callable[[dict[str, Any]], bool], what: str, s: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + s
    while True:
        st = cell.status()
        if pred(st):
            return st
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {st.get('phase')}"
        time.sleep(0.05)


def _race_events(cell: Cell) -> list[tuple[float, dict[str, Any]]]:
    with _db(cell) as db:
        rows = db.execute("SELECT t, data FROM events WHERE topic = 'agent.race' ORDER BY id")
        return [(float(t), json.loads(d)) for t, d in rows]


def _trainer_job(trainer: TrainerProcess, agent_job: int, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while True:
        rows = [r for r in trainer.jobs()["jobs"] if r["agent_job"] == agent_job]
        if rows and rows[-1]["state"] == state:
            return rows[-1]
        assert time.monotonic() < deadline, f"trainer job {agent_job} never {state}: {rows}"
        time.sleep(0.02)


def _restart(cell: Cell) -> dict[str, Any]:
    cell.kill()
    cell.start()
    return cell.status()


def test_agent_killed_mid_race_and_mid_round_loses_no_grasp_and_serves_no_loser(
    tmp_path: Path,
) -> None:
    incoming = tmp_path / "incoming"
    base = make_parent(incoming)
    port = free_port()
    tcfg = write_service_config(
        tmp_path / "t.toml", tmp_path / "trainer", port, finetune=ALWAYS_A_CHILD
    )
    trainer = TrainerProcess(tcfg, tmp_path / "trainer.log", port).start()
    world = tmp_path / "world"
    world.write_text("0.9")
    cell = Cell(
        tmp_path,
        incoming / base,
        grasp_time_s=0.01,
        options={"world": str(world)},
        trainer={"endpoint": trainer.endpoint, "agent_id": "crash", "heartbeat_s": 0.2},
        detector={"reference_grasps": 30},
        lifecycle={"exploration_grasps": 30},
        race={"max_grasps": 160},
        rounds={"round_grasps": 40, "margin": 0.05},
    )
    rng = random.Random(3)
    try:
        cell.start()
        _until(cell, lambda s: s["detector"]["p0"] is not None, "the detector's reference")
        world.write_text("0.5")
        assert request(cell.cmd_ep, "mark-condition", {"name": "dim"}, timeout_s=5)["ok"]
        st = _until(cell, lambda s: s["phase"] == "racing", "the race", 150)
        kid = next(r["policy"] for r in st["race"]["standings"] if not r["parent"])
        # killed twice mid-race, at random grasps
        for _ in range(2):
            time.sleep(rng.uniform(0.2, 0.8))
            before = cell.status()
            assert before["phase"] == "racing", before["phase"]
            st = _restart(cell)
            assert st["phase"] == "racing" and st["race"]["grasps"] >= before["race"]["grasps"]
        decided = _until(cell, lambda s: s["phase"] != "racing", "the verdict", 120)
        # mid-round: killed while collecting the next round's grasps
        assert decided["phase"] == "exploring" and decided["rounds"]["round"] == 1
        time.sleep(rng.uniform(0.1, 0.3))
        st = _restart(cell)
        assert st["phase"] in ("exploring", "training") and st["rounds"]["races"] == 1
        st = _until(cell, lambda s: s["rounds"]["round"] == 2, "the second round's job", 90)
        assert st["policy"] == base and kid not in st["warm"]
        # the trainer SIGKILLed while it trains the second round's job, then back
        job2 = _until(cell, lambda s: s["job"] is not None, "the second job's id")["job"]
        _trainer_job(trainer, job2, "training")
        trainer.kill()
        trainer.start()
        st = _until(cell, lambda s: s["phase"] == "racing", "the second round's race", 150)
        kid2 = next(r["policy"] for r in st["race"]["standings"] if not r["parent"])
        assert kid2 not in (kid, base) and st["rounds"]["round"] == 2
        resumed = _trainer_job(trainer, job2, "acknowledged")
        assert resumed["attempts"] == 2 and resumed["bundle_id"] == kid2, resumed
    finally:
        if cell.proc is not None and cell.proc.poll() is None:
            cell.proc.kill()
        trainer.stop()
    events = _race_events(cell)
    # the first race (round 1's); round 2's race is still running
    (t0, started), (_, started2) = [(t, d) for t, d in events if d["event"] == "started"]
    ((t1, verdict),) = [(t, d) for t, d in events if d["event"] == "decided"]
    assert started2["parent"] == base and started2["candidates"] == [kid2]
    # both arms grasp at 0.5: the parent keeps serving, at the cap or with the child eliminated
    assert verdict["winner"] == base and verdict["reason"] in ("cap", "candidates eliminated")
    with _db(cell) as db:
        grasps = db.execute("SELECT id, policy_id, t_start FROM grasps ORDER BY id").fetchall()
    in_race = [g for g in grasps if t0 <= g[2] <= t1]
    # every logged race grasp was counted, once, across two kills
    assert len(in_race) == verdict["grasps"] == sum(a["grasps"] for a in verdict["arms"])
    by_arm = {a["policy"]: a["grasps"] for a in verdict["arms"]}
    assert by_arm == {p: sum(g[1] == p for g in in_race) for p in (base, kid)}
    # the loser never served again, across the restart after its race
    assert all(g[2] <= t1 for g in grasps if g[1] == kid)
    assert started["parent"] == base and started["candidates"] == [kid]
