"""The whole loop with real processes: ``robot-trainer serve`` and ``robot-agent run`` on the sim.

Real child processes, real loopback sockets on free ports, real files under tmp_path, the
shipped base policy. The sim's schedule changes the world by itself (baseline, then the
gripper moved 10 cm: the base policy drops from ~86% to ~14%); the agent is told nothing
(``on_alarm = "mark"``). What happens is read back from the agent's SQLite grasp log and
its PUB events: serving on baseline -> alarm -> new condition -> exploration -> job ->
bundle -> swap -> grasps under the child, whose parent is the base policy.

The trainer has a small base replay set as prior data (``robot-trainer base-data``, made
once per module) and runs the real recipe on a tiny budget: the action-shift search finds
the moved gripper from the exploration grasps, then a few steps; ``min_gain = -1`` and
``se_margin = 0`` return whichever candidate scores best on held-out data when that is not
the parent. The sim is seeded, so what the agent sees up to the swap is the same every run.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.procs import ModuleProcess
from testkit.trainer import TrainerProcess, free_port, write_service_config
from trainer.demo.procs import EventStream
from trainer.demo.setup import dumps_toml

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "policies" / "base"
BASE_ID = json.loads((BASE / "meta.json").read_text())["id"]
CHANGE_AT = 60
"""Grasps on baseline before the sim moves the gripper."""
BASE_GRASPS = 150
"""Size of the base replay set (prior data)."""
EXPLORE = 100
"""Exploration grasps under the new condition (the job's data)."""
CHILD_GRASPS = 60
"""Grasps under the child the first test waits for (its success is compared)."""

LOOP_FINETUNE: dict[str, Any] = {
    "max_steps": 20,
    "eval_every": 10,
    "patience": 1,
    "batch_size": 16,
    "lr": 0.0005,
    "holdout": 0.25,
    "augment": "off",
    "threads": 1,
    "device": "cpu",
    "checkpoint_every": 10,
    "max_eval": 64,
    "shift_samples": EXPLORE,
    "min_gain": -1.0,
    "se_margin": 0.0,
    "prior_tolerance": 1.0,
}
"""The real recipe on a tiny budget that always returns its best candidate (see above)."""


class Events:
    """Every event of the agent's PUB socket, in order (subscribed before the agent starts)."""

    def __init__(self, endpoint: str) -> None:
        self.stream = EventStream(endpoint)
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __enter__(self) -> Events:
        self.stream.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()

    def pump(self, timeout_ms: int = 50) -> None:
        self.seen.extend(self.stream.poll(timeout_ms))

    def topics(self) -> list[str]:
        return [t for t, _ in self.seen]

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [d for t, d in self.seen if t == topic]

    def wait(
        self, pred: Callable[[], bool], timeout_s: float, what: str, why: Callable[[], str]
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump(100)
            if pred():
                return
        raise AssertionError(f"timed out waiting for {what}; {why()}")


class AgentProcess(ModuleProcess):
    """``python -m agent.cli run --config ...`` as a child process."""

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__(["agent.cli", "run", "--config", str(config)], log)

    def start(self) -> AgentProcess:
        self.spawn()
        return self

    def stop(self) -> int | None:
        return self.terminate(60)


@pytest.fixture(scope="module")
def base_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small base replay set (``robot-trainer base-data``: the base policy on baseline):
    the prior data of every job, which the action-shift search needs (~15 s)."""
    out = tmp_path_factory.mktemp("base") / "base-data"
    cmd = [sys.executable, "-m", "trainer.entry", "base-data", "--out", str(out)]
    cmd += ["--grasps", str(BASE_GRASPS), "--bundle", str(BASE), "--workers", "1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


class Loop:
    """One trainer and one agent on the sim, configured for a fast loop under tmp_path."""

    def __init__(self, tmp: Path, base_data: Path, finetune: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        port = free_port()
        tcfg = write_service_config(
            tmp / "trainer.toml",
            tmp / "trainer",
            port,
            finetune=finetune or LOOP_FINETUNE,
            base_bundle=str(BASE),
            base_dataset=str(base_data),
            progress_interval_s=0.2,
        )
        self.trainer = TrainerProcess(tcfg, tmp / "trainer.log", port)
        cmd, ev = free_port(), free_port()
        self.events_endpoint = f"tcp://127.0.0.1:{ev}"
        self.agent_dir = tmp / "agent"
        cfg = {
            "agent": {"data_dir": str(self.agent_dir)},
            "driver": {
                "type": "sim",
                "condition": "baseline",
                "seed": 0,
                "options": {"split": "test"},
                "sim": {"schedule": [[0, "baseline"], [CHANGE_AT, "offset_gripper"]]},
            },
            # the latency check compares the child, measured now, with the base policy,
            # measured at start-up: on a loaded test machine that ratio is noise
            "policy": {"bundle": str(BASE), "max_latency_factor": 20.0},
            "cem": {"iterations": 2},
            # p0 from the first 30 grasps; a drop of 30 points or more alarms within a few
            # grasps (the base policy loses ~70 on the moved gripper). ARL0 3,000: at 300 a
            # false alarm under the child (a second condition) came within the test's
            # grasps about 1 run in 5
            "detector": {"arl0": 3000.0, "min_drop": 0.3, "reference_grasps": 30},
            "lifecycle": {
                "initial_condition": "baseline",
                "on_alarm": "mark",
                "exploration_grasps": EXPLORE,
            },
            "sockets": {
                "command_endpoint": f"tcp://127.0.0.1:{cmd}",
                "event_endpoint": self.events_endpoint,
            },
            "trainer": {
                "endpoint": self.trainer.endpoint,
                "agent_id": "e2e",
                "heartbeat_s": 0.2,
                "timeout_s": 1.0,
                "backoff_min_s": 0.2,
                "backoff_max_s": 1.0,
            },
        }
        (tmp / "agent.toml").write_text(dumps_toml(cfg))
        self.agent = AgentProcess(tmp / "agent.toml", tmp / "agent.log")

    def logs(self) -> str:
        parts = []
        for name in ("agent.log", "trainer.log"):
            p = self.tmp / name
            text = p.read_text(errors="replace") if p.exists() else ""
            parts.append(f"--- {name} (tail)\n{text[-2500:]}")
        return "\n".join(parts)

    def db(self) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.agent_dir / 'grasps.db'}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def close(self) -> None:
        self.agent.stop()
        self.trainer.stop()


def _index(topics: list[str], topic: str, start: int = 0) -> int:
    return topics.index(topic, start)


def test_world_changes_agent_detects_explores_trains_and_swaps_in_the_child(
    tmp_path: Path, base_data: Path
) -> None:
    loop = Loop(tmp_path, base_data)
    loop.trainer.start()
    with Events(loop.events_endpoint) as ev:
        loop.agent.start()
        try:

            def child_grasps() -> bool:
                under = [d for d in ev.of("agent.grasp") if d.get("policy") not in (None, BASE_ID)]
                won = any(d.get("previous") == BASE_ID for d in ev.of("agent.policy.swapped"))
                return won and len(under) >= CHILD_GRASPS  # the child won its race

            ev.wait(child_grasps, 200, "grasps under the trained child", loop.logs)
        finally:
            code = loop.agent.stop()
            loop.trainer.stop()
    assert code == 0, loop.logs()
    assert not ev.of("agent.error"), ev.of("agent.error")
    assert not ev.of("agent.policy.rejected"), ev.of("agent.policy.rejected")
    topics = ev.topics()
    # the order of what happened, from the PUB socket
    alarm = _index(topics, "agent.alarm")
    marked = _index(topics, "agent.condition", alarm)
    jobs = [(i, d) for i, (t, d) in enumerate(ev.seen) if t == "agent.job"]
    statuses = [d["status"] for _, d in jobs]
    assert "improved" in statuses, statuses
    swaps = [(i, d) for i, (t, d) in enumerate(ev.seen) if t == "agent.policy.swapped"]
    trained = [(i, d) for i, d in swaps if d.get("previous") == BASE_ID]
    assert len(trained) == 1, swaps
    swap_at, swap = trained[0]
    child = swap["policy"]
    assert marked < jobs[0][0] < swap_at
    assert ev.of("agent.condition")[0]["source"] == "alarm"
    new_condition = ev.of("agent.condition")[0]["condition"]
    assert new_condition != "baseline"

    with loop.db() as db:
        grasps = db.execute(
            "SELECT g.id, g.policy_id, g.mode, g.success, c.name AS cond FROM grasps g "
            "JOIN conditions c ON c.id = g.condition_id ORDER BY g.id"
        ).fetchall()
        policies = {r["id"]: r for r in db.execute("SELECT * FROM policies")}
        job_rows = db.execute("SELECT * FROM jobs").fetchall()
    # serving on baseline, with the base policy, until the world changed
    first = grasps[:CHANGE_AT]
    assert all(g["cond"] == "baseline" and g["policy_id"] == BASE_ID for g in first)
    assert all(g["mode"] == "serve" for g in first)
    # exploration under the condition the alarm marked, with the base policy
    # (the first EXPLORE of them: after the child's race further rounds may collect more)
    explore = [g for g in grasps if g["mode"] == "explore" and g["cond"] == new_condition]
    explore = explore[:EXPLORE]
    assert len(explore) == EXPLORE
    assert all(g["cond"] == new_condition and g["policy_id"] == BASE_ID for g in explore)
    assert explore[0]["id"] > CHANGE_AT  # the alarm came after the change, not before
    # the child: a new policy whose parent is the base policy, trained for that condition
    assert child in policies and policies[child]["parent_id"] == BASE_ID
    under_child = [g for g in grasps if g["policy_id"] == child]
    assert len(under_child) >= CHILD_GRASPS
    assert all(g["cond"] == new_condition for g in under_child)
    assert under_child[0]["id"] > explore[-1]["id"]
    # and it grasps better than its parent did under the new condition (the moved gripper:
    # the recipe's shift search finds the offset from the exploration grasps)
    explored_rate = sum(g["success"] for g in explore) / len(explore)
    child_rate = sum(g["success"] for g in under_child) / len(under_child)
    assert child_rate >= explored_rate + 0.10, (explored_rate, child_rate)
    # the first job's result is the child (lineage in the grasp log); later rounds may follow
    assert job_rows[0]["parent_policy_id"] == BASE_ID
    assert job_rows[0]["result_policy_id"] == child


SLOW_FINETUNE: dict[str, Any] = {
    **LOOP_FINETUNE,
    "max_steps": 60,
    "patience": 100,
}
"""Long enough (about 10 s) to kill the trainer after its first checkpoint and before the end."""


def test_trainer_sigkilled_mid_job_restarts_and_the_agent_swaps_once(
    tmp_path: Path, base_data: Path
) -> None:
    """The agent side of a trainer crash, across the real ``robot-agent run`` process: the
    trainer dies (SIGKILL) while training the agent's job and comes back on the same port;
    the job resumes from its checkpoint, the agent's link fetches the result once and the
    daemon swaps once: one job, one child, one swap, one copy of every bundle."""
    loop = Loop(tmp_path, base_data, SLOW_FINETUNE)
    loop.trainer.start()
    with Events(loop.events_endpoint) as ev:
        loop.agent.start()
        try:

            def trained_past_a_checkpoint() -> bool:
                steps = [
                    (d.get("detail") or {}).get("step", 0)
                    for d in ev.of("agent.job")
                    if d.get("status") == "training"
                ]
                return any(isinstance(s, int) and 10 <= s < 50 for s in steps)

            ev.wait(trained_past_a_checkpoint, 150, "the job training", loop.logs)
            loop.trainer.kill()
            assert not any(d.get("status") == "improved" for d in ev.of("agent.job"))
            time.sleep(1.0)  # the agent's link notices and backs off
            loop.trainer.start()

            def swapped_and_settled() -> bool:  # the child won its race and serves
                swapped = any(d.get("previous") == BASE_ID for d in ev.of("agent.policy.swapped"))
                under_child = [
                    d for d in ev.of("agent.grasp") if d.get("policy") not in (None, BASE_ID)
                ]
                return swapped and len(under_child) >= 10

            ev.wait(swapped_and_settled, 150, "the swap after the restart", loop.logs)
            jobs_on_trainer = loop.trainer.jobs()
        finally:
            code = loop.agent.stop()
            loop.trainer.stop()
    assert code == 0, loop.logs()
    trained = [d for d in ev.of("agent.policy.swapped") if d.get("previous") == BASE_ID]
    assert len(trained) == 1, ev.of("agent.policy.swapped")
    child = trained[0]["policy"]
    improved = [d for d in ev.of("agent.job") if d.get("status") == "improved"]
    assert len(improved) == 1, improved  # the result reached the daemon once
    assert not ev.of("agent.error"), ev.of("agent.error")
    # the trainer: one job, trained twice (the crash), one result bundle
    rows = jobs_on_trainer["jobs"]
    assert len(rows) == 1 and rows[0]["attempts"] == 2, rows
    assert rows[0]["state"] == "acknowledged", rows
    bundles = sorted(p.name for p in (tmp_path / "trainer" / "bundles").iterdir())
    assert bundles == sorted([BASE_ID, child])
    assert "resuming" in (tmp_path / "trainer.log").read_text()
    # the agent: one job whose result is the child, two policies, the child's parent the base
    with loop.db() as db:
        policies = {r["id"]: r for r in db.execute("SELECT * FROM policies")}
        job_rows = db.execute("SELECT * FROM jobs").fetchall()
        swaps_logged = db.execute(
            "SELECT count(*) FROM events WHERE topic = 'agent.policy.swapped'"
        ).fetchone()[0]
        under_child = db.execute(
            "SELECT count(*) FROM grasps WHERE policy_id = ?", (child,)
        ).fetchone()[0]
    assert set(policies) == {BASE_ID, child} and policies[child]["parent_id"] == BASE_ID
    assert len(job_rows) == 1 and job_rows[0]["result_policy_id"] == child
    assert swaps_logged == 2  # the initial load of the base policy, then the child
    assert under_child >= 10
    store = sorted(p.name for p in (loop.agent_dir / "policies").iterdir())
    assert store == sorted([BASE_ID, child])
