"""Cancelling jobs through the agent's trainer link: the trainer stops what the agent abandoned.

Real sockets, a real ``robot-trainer serve`` process running the real fine-tune recipe on the
tiny network with a budget it would not finish during the test (only a cancel ends a job), and
for the daemon path the daemon on the fake driver with the link attached as ``robot-agent run``
attaches it (``agent.cli._attach_trainer_link``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Daemon
from testkit.net import free_port, wait_for
from testkit.trainer import TrainerProcess, make_export, make_parent, write_service_config
from tests.agent.test_trainer_link import make_link
from tests.trainer.test_service_cancel import FOREVER

pytestmark = pytest.mark.timeout(90)


def forever_trainer(tmp_path: Path, port: int | None = None) -> TrainerProcess:
    port = port or free_port()
    cfg = write_service_config(tmp_path / "t.toml", tmp_path / "trainer", port, finetune=FOREVER)
    return TrainerProcess(cfg, tmp_path / "trainer.log", port)


def count_cancels(daemon: Daemon) -> list[int]:
    """Wrap the cancel hook the CLI wired into ``daemon``: the jobs it is called with, in order
    (the hook still runs)."""
    wired = daemon.jobs.cancel_hook
    assert wired is not None
    calls: list[int] = []

    def cancel_hook(job: int) -> None:
        calls.append(job)
        wired(job)

    daemon.set_cancel_hook(cancel_hook)
    return calls


def away_trainer(tmp_path: Path) -> tuple[TrainerProcess, Path, str]:
    """A trainer that trains forever, not started yet (away), the agent's policy store under
    ``tmp_path/agent`` and the parent policy in it."""
    store = tmp_path / "agent" / "policies"
    return forever_trainer(tmp_path), store, make_parent(store)


def rows_by_job(tr: TrainerProcess) -> dict[int, dict[str, Any]]:
    return {int(r["agent_job"]): r for r in tr.jobs()["jobs"]}


def test_link_cancels_a_waiting_job_while_the_trainer_is_away_and_a_training_one_at_once(
    tmp_path: Path,
) -> None:
    tr, store, parent = away_trainer(tmp_path)
    link, rec = make_link(tmp_path / "agent", tr.endpoint, "robot-c", store)
    try:
        # the trainer is away: job 1 is cancelled before the link could send anything
        for job in (1, 2):
            export = make_export(tmp_path / "x" / f"job-{job}", 200, "checkerboard", seed=job)
            link.submit(job, export, parent)
        wait_for(lambda: link.phases() == {1: "upload", 2: "upload"}, 10, "both jobs recorded")
        link.cancel(1)
        wait_for(lambda: link.phases().get(1) == "cancel", 10, "job 1 cancelled in the link")
        wait_for(lambda: link.stats["connects"] >= 2, 20, "a retry with backoff")
        tr.start()
        wait_for(lambda: link.phases().get(1) == "cancelled", 20, "the cancel answered")
        wait_for(lambda: rows_by_job(tr).get(2, {}).get("state") == "training", 30, "job 2")
        assert 1 not in rows_by_job(tr)  # never uploaded, never trained
        # job 2 trains "forever": a cancel stops it on the trainer within a few seconds
        wait_for(lambda: "training" in rec.of(2), 20, "job 2's progress reaching the agent")
        link.cancel(2)
        link.cancel(2)  # idempotent
        wait_for(lambda: rows_by_job(tr)[2]["state"] == "cancelled", 5, "job 2 cancelled")
        wait_for(lambda: tr.jobs()["running"] is None, 5, "the trainer's worker free")
        wait_for(lambda: link.phases().get(2) == "cancelled", 5, "the link done with job 2")
        # the cancelled jobs report "cancelled" last, and nothing after it
        assert rec.of(1)[-1] == "cancelled", rec.of(1)
        assert rec.of(2)[-1] == "cancelled" and rec.of(2).count("cancelled") == 1
        assert not rec.results
        assert not (
            tmp_path / "trainer" / "lineages" / "robot-c" / rows_by_job(tr)[2]["key"]
        ).exists()
    finally:
        link.close()
        assert tr.stop() == 0


def test_daemon_marking_a_new_condition_stops_its_job_on_the_trainer(tmp_path: Path) -> None:
    from agent.ctl import request
    from testkit.daemon import linked_config, linked_daemon, serve, stop_linked
    from testkit.fakes import FakeDriver

    tr = forever_trainer(tmp_path).start()
    incoming = tmp_path / "incoming"
    base = make_parent(incoming)
    cfg = linked_config(tmp_path, incoming / base, tr.endpoint, "robot-m", 60)
    daemon, link = linked_daemon(cfg, FakeDriver(p_success=0.5))
    calls = count_cancels(daemon)
    th = serve(daemon)
    try:
        ep = daemon.endpoints["commands"]
        assert request(ep, "mark-condition", {"name": "checkerboard"})["ok"]
        wait_for(lambda: rows_by_job(tr).get(1, {}).get("state") == "training", 60, "job 1")
        key = rows_by_job(tr)[1]["key"]
        assert tr.jobs()["running"] == key
        # the world changed again while job 1 trains: the daemon abandons it
        assert request(ep, "mark-condition", {"name": "harsh_lighting"})["ok"]
        wait_for(lambda: rows_by_job(tr)[1]["state"] == "cancelled", 5, "job 1 cancelled")
        wait_for(lambda: tr.jobs()["running"] != key, 5, "the trainer's worker let go of it")
        wait_for(lambda: link.phases().get(1) == "cancelled", 5, "the link done with job 1")

        def db(sql: str) -> list[tuple[Any, ...]]:
            con = sqlite3.connect(f"file:{daemon.db_path}?mode=ro", uri=True, timeout=10)
            try:
                return con.execute(sql).fetchall()
            finally:
                con.close()

        def told() -> bool:  # the link's last word on job 1 reached the daemon (async)
            rows = db("SELECT data FROM events WHERE topic = 'agent.job'")
            events = [json.loads(d) for (d,) in rows]
            return any(
                e["job"] == 1 and e["status"] == "cancelled" and e.get("cancelled") for e in events
            )

        wait_for(told, 10, "the daemon told job 1 is cancelled on the trainer")
        assert db("SELECT status FROM jobs WHERE id = 1") == [("cancelled",)]
        assert db("SELECT data FROM events WHERE topic = 'agent.error'") == []
        assert daemon.snapshot()["condition"] == "harsh_lighting"
        assert calls == [1]  # the job's owner cancels once; the link's reports are news
        assert link.phases()[1] == "cancelled"
    finally:
        stop_linked(daemon, th, link)
        tr.stop()
    # a link that lost a cancel in a crash is handed the cancelled jobs again at each start;
    # this one, done with job 1, leaves it as it is
    again, link = linked_daemon(cfg, FakeDriver(p_success=0.5))
    seen = count_cancels(again)
    th = serve(again)
    try:
        assert seen == [1]
        time.sleep(0.3)
        assert link.phases()[1] == "cancelled"
    finally:
        stop_linked(again, th, link)


def test_a_cancel_recorded_by_the_link_survives_an_agent_restart(tmp_path: Path) -> None:
    """The link records the cancel before anything else: a new link on the same records
    (the agent restarted before the trainer was reachable) sends it, and nothing uploads."""
    tr, store, parent = away_trainer(tmp_path)
    link, _ = make_link(tmp_path / "agent", tr.endpoint, "robot-r", store)
    try:
        link.submit(1, make_export(tmp_path / "x" / "job-1", 200, "checkerboard"), parent)
        link.cancel(1)
        wait_for(lambda: link.phases() == {1: "cancel"}, 10, "the cancel recorded")
    finally:
        link.close()
    tr.start()
    again, rec = make_link(tmp_path / "agent", tr.endpoint, "robot-r", store)
    try:
        wait_for(lambda: again.phases() == {1: "cancelled"}, 20, "the cancel sent after restart")
        assert rec.of(1) == ["cancelled"]
        assert tr.jobs()["jobs"] == [] and tr.jobs()["counters"].get("chunks.written", 0) == 0
    finally:
        again.close()
        assert tr.stop() == 0


def test_a_job_finished_before_its_cancel_is_acknowledged_unfetched(tmp_path: Path) -> None:
    """The trainer finished the job while the agent was down; the agent cancels it at start:
    the link releases the result (``ack``) without downloading it or handing it on."""
    from agent.config import config_from_dict
    from agent.link import TrainerLink
    from tests.agent.test_trainer_link import Recorder, trainer

    tr = trainer(tmp_path).start()  # the tiny budget: the job finishes in seconds
    store = tmp_path / "agent" / "policies"
    parent = make_parent(store)
    link, _ = make_link(tmp_path / "agent", tr.endpoint, "robot-f", store)
    try:
        link.submit(1, make_export(tmp_path / "x" / "job-1", 200, "checkerboard", seed=1), parent)
        wait_for(lambda: link.phases().get(1) == "wait", 30, "job 1 uploaded")
    finally:
        link.close()
    wait_for(lambda: rows_by_job(tr)[1]["state"] == "done", 60, "job 1 done on the trainer")
    cfg = config_from_dict(
        {
            "agent": {"data_dir": str(tmp_path / "agent")},
            "trainer": {
                "endpoint": tr.endpoint,
                "agent_id": "robot-f",
                "chunk_bytes": 65536,
                "heartbeat_s": 0.2,
                "timeout_s": 1.0,
            },
        }
    )
    rec = Recorder()
    again = TrainerLink(cfg, store, rec.on_result, rec.on_status)
    again.cancel(1)  # queued before the thread runs: taken before anything is fetched
    again.start()
    try:
        wait_for(lambda: again.phases().get(1) == "cancelled", 20, "the cancel settled")
        assert rows_by_job(tr)[1]["state"] == "acknowledged"  # released, not corrupted
        assert rec.of(1) == ["cancelled"] and rec.statuses[-1][2]["trainer_state"] == "acknowledged"
        assert not rec.results and again.stats["gets_sent"] == 0
        assert not (tmp_path / "trainer" / "jobs" / rows_by_job(tr)[1]["key"]).exists()
    finally:
        again.close()
        assert tr.stop() == 0
