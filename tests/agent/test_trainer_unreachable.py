"""The trainer unreachable while the robot works on (issue 9): memory stays bounded, the
exports wait on disk, a job the daemon abandoned meanwhile never reaches the trainer (the
link's cancel), and the job still wanted reaches it exactly once when it returns.

The daemon runs in-process on a fast fake driver with the real trainer link attached the way
``robot-agent run`` attaches it (``agent.cli._attach_trainer_link``); the trainer is a real
``robot-trainer serve`` process (testkit/trainer.py: a tiny network and budget),
started only after 2,000 grasps are logged and three jobs are waiting.
``bench/trainer_unreachable.py`` runs the same scenario longer and reports the figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.ctl import request
from testkit.daemon import (
    Restart,
    Running,
    linked_config,
    linked_daemon,
    query,
    serve,
    stop_linked,
    training_on_a_job,
    wait_match,
)
from testkit.fakes import FakeDriver, make_bundle
from testkit.net import free_port, wait_for
from testkit.trainer import TINY_FINETUNE, TrainerProcess, make_parent, write_service_config

pytestmark = pytest.mark.timeout(120)

GRASPS = 2000
CONDITIONS = ("c1", "c2", "c3")
EXPLORE = 200


def rss_bytes() -> int:
    """This process's resident set size (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_trainer_unreachable_for_2000_grasps_memory_bounded_each_job_delivered_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    incoming = tmp_path / "incoming"
    base = make_parent(incoming)
    cfg = linked_config(
        tmp_path,
        incoming / base,
        f"tcp://127.0.0.1:{port}",  # nobody there yet
        "robot-u",
        EXPLORE,
        {"backoff_min_s": 0.2, "backoff_max_s": 1.0},
        probation={"enabled": False},
        rounds={"race": False},  # each result swapped in at once: delivery is what is tested
        # the latency check compares a child measured now with the parent measured at
        # start-up: on a loaded test machine that ratio is noise (not what this test is about)
        policy={"max_latency_factor": 20.0},
    )
    daemon, link = linked_daemon(cfg, FakeDriver(p_success=0.5))
    th = serve(daemon)
    tr: TrainerProcess | None = None
    try:
        ep = daemon.endpoints["commands"]

        def grasps() -> int:
            return int(daemon.snapshot()["grasps"])

        # Three conditions in a row, each explored and exported into a job while the trainer
        # is away (a new condition cancels the previous job in the daemon, and the link drops
        # it: nothing of it goes to the trainer).
        rss: list[int] = []
        for i, name in enumerate(CONDITIONS, start=1):
            assert request(ep, "mark-condition", {"name": name})["ok"]
            wait_for(lambda i=i: i in link.phases(), 60, f"job {i} handed to the link")
            if i == 1:
                rss.append(rss_bytes())
        wait_for(lambda: grasps() >= GRASPS // 2, 60, "1,000 grasps")
        rss.append(rss_bytes())
        wait_for(lambda: grasps() >= GRASPS, 60, "2,000 grasps")
        rss.append(rss_bytes())
        # it kept trying, with backoff (on a quiet machine 2,000 grasps can take < 3 tries)
        wait_for(lambda: link.stats["connects"] >= 3, 30, "three connection attempts")
        assert set(link.phases().items()) == {(1, "cancel"), (2, "cancel"), (3, "upload")}
        jobs = query(daemon.db_path, "SELECT id, export_path FROM jobs ORDER BY id")
        exports = {int(r["id"]): Path(r["export_path"]) for r in jobs}
        assert sorted(exports) == [1, 2, 3]
        assert all((p / "index.json").is_file() for p in exports.values())  # waiting on disk
        indexes = {j: json.loads((p / "index.json").read_text()) for j, p in exports.items()}
        # memory: flat while 1,000 grasps more are logged and three jobs wait (the first
        # sample is taken with job 1 already waiting)
        assert rss[2] - rss[1] < 16 << 20, rss
        assert rss[2] - rss[0] < 48 << 20, rss

        tcfg = write_service_config(
            tmp_path / "trainer.toml",
            tmp_path / "trainer",
            port,
            finetune={**TINY_FINETUNE, "min_gain": -1.0, "max_steps": 40},
        )
        tr = TrainerProcess(tcfg, tmp_path / "trainer.log", port).start()
        wait_for(
            lambda: link.phases() == {1: "cancelled", 2: "cancelled", 3: "done"},
            90,
            "job 3 done, jobs 1 and 2 cancelled",
        )
        info = tr.jobs()
        rows: list[dict[str, Any]] = info["jobs"]
        counters = info["counters"]
        # exactly once: one trainer job for the job still wanted, no chunk written twice
        assert [r["agent_job"] for r in rows] == [3], rows
        assert counters.get("chunks.duplicate", 0) == 0
        bundles = sorted(p.name for p in (tmp_path / "trainer" / "bundles").iterdir())
        assert bundles.count(base) == 1  # the parent is held once
        lineage = tmp_path / "trainer" / "lineages" / "robot-u"
        sources = [json.loads((d / "source.json").read_text()) for d in lineage.iterdir()]
        assert [(s["agent_job"], s["condition"]) for s in sources] == [(3, CONDITIONS[2])]
        for s in sources:  # every job's data: the export, whole
            # the exploration, plus any grasp served in the condition before the export ran
            assert s["grasps"] == indexes[s["agent_job"]]["grasps"] >= EXPLORE
        # the trainer holds job 3's data: its export left the robot; the cancelled jobs'
        # exports stay until the disk budget needs their room
        assert not exports[3].exists()
        assert exports[1].is_dir() and exports[2].is_dir()

        # the daemon: job 3's outcome taken (a child swapped in, or the parent kept); the
        # cancelled jobs' results never swapped in, and nothing went wrong on the way
        def settled() -> bool:
            (row,) = query(daemon.db_path, "SELECT status FROM jobs WHERE id = 3")
            return str(row["status"]) in ("done", "no_improvement")

        wait_for(settled, 30, "job 3's outcome in the grasp log")
        jobs = query(daemon.db_path, "SELECT id, status, result_policy_id FROM jobs ORDER BY id")
        assert [r["status"] for r in jobs][:2] == ["cancelled", "cancelled"]
        swaps = query(
            daemon.db_path, "SELECT data FROM events WHERE topic = 'agent.policy.swapped'"
        )
        served = [json.loads(r["data"])["policy"] for r in swaps]
        if jobs[2]["status"] == "done":
            assert served == [base, jobs[2]["result_policy_id"]]
        else:
            assert served == [base]
        for pid in {r["result_policy_id"] for r in jobs[:2]} - {None}:
            (row,) = query(daemon.db_path, "SELECT status FROM policies WHERE id = ?", pid)
            assert row["status"] == "candidate"  # kept (promote can serve it), never served
        errors = query(daemon.db_path, "SELECT data FROM events WHERE topic = 'agent.error'")
        assert errors == [], [dict(r) for r in errors]
    finally:
        stop_linked(daemon, th, link)
        if tr is not None:
            tr.stop()


def test_trained_bundle_offered_again_or_for_a_cancelled_job_is_never_swapped_in(
    start_daemon: Callable[..., Running], tmp_path: Path
) -> None:
    """The link offers a result it delivered again at start (up to 3 times) when the daemon
    did not import it, and delivers the results of jobs the daemon cancelled (a new
    condition came first): neither swaps, duplicates a row or raises a control error."""
    r = start_daemon(
        lifecycle={"exploration_grasps": 5}, probation={"alpha": 0.001}, rounds={"race": False}
    )
    sub, job, old = training_on_a_job(r)
    child = make_bundle(tmp_path / "trained", seed=9, parent_id=old)
    r.daemon.offer_trained(child, job)
    swapped = wait_match(sub, "agent.policy.swapped", lambda d: d["previous"] == old)
    new = swapped["policy"]
    r.wait_for(lambda s: s["policy"] == new and s["grasps"] >= 3)
    for _ in range(3):  # offered again, as the link does at each start
        r.daemon.offer_trained(child, job)
    # a job cancelled by the next condition; its result arrives afterwards
    assert r.ctl("mark-condition", name="glare")["ok"]
    cancelled = wait_match(sub, "agent.job", lambda d: d["status"] == "queued" and d["job"] != job)[
        "job"
    ]
    assert r.ctl("mark-condition", name="dark")["ok"]
    late = make_bundle(tmp_path / "late", seed=11, parent_id=new)
    r.daemon.offer_trained(late, cancelled)
    r.daemon.job_update(cancelled, "improved", {"bundle_id": late.name})

    def late_recorded() -> bool:
        rows = query(r.daemon.db_path, "SELECT result_policy_id FROM jobs WHERE id = ?", cancelled)
        return bool(rows and rows[0]["result_policy_id"])

    wait_for(late_recorded, 20, "the cancelled job's result recorded")
    st = r.daemon.snapshot()
    assert st["policy"] == new  # the loader is FIFO: the repeated offers were handled first
    db = r.daemon.db_path
    swaps = [
        json.loads(x["data"])
        for x in query(db, "SELECT data FROM events WHERE topic = ?", "agent.policy.swapped")
    ]
    assert [s["policy"] for s in swaps] == [old, new]
    policies = {x["id"]: x["status"] for x in query(db, "SELECT id, status FROM policies")}
    late_id = query(db, "SELECT result_policy_id FROM jobs WHERE id = ?", cancelled)[0][0]
    assert set(policies) == {old, new, late_id} and policies[late_id] == "candidate"
    jobs = {x["id"]: (x["status"], x["result_policy_id"]) for x in query(db, "SELECT * FROM jobs")}
    assert jobs[job] == ("done", new) and jobs[cancelled] == ("cancelled", late_id)
    assert query(db, "SELECT data FROM events WHERE topic = 'agent.error'") == []


def test_result_imported_but_not_swapped_before_a_restart_is_swapped_in_at_start(
    tmp_path: Path, restartable: Restart
) -> None:
    """The daemon stopped after the loader had put a job's result into the store and before
    the swap was committed: the link never offers a bundle already in the store again, so
    the daemon itself loads it at start (it would otherwise wait in TRAINING for ever)."""
    import shutil

    first, th = restartable()
    try:
        assert request(first.endpoints["commands"], "mark-condition", {"name": "offset"})["ok"]
        wait_for(lambda: first.snapshot()["phase"] == "training", 20, "the job")
        snap = first.snapshot()
        job, old = int(snap["job"]), str(snap["policy"])

        def exported() -> bool:  # a trainer has a job's result only after its export
            rows = query(first.db_path, "SELECT export_path FROM jobs WHERE id = ?", job)
            return bool(rows) and bool(rows[0]["export_path"])

        wait_for(exported, 20, "the job's export")
        child = make_bundle(tmp_path / "trained", seed=9, parent_id=old)
        shutil.copytree(child, first.store / child.name)  # the loader's import, then the crash
        first.job_update(job, "improved", {"bundle_id": child.name, "path": str(child)})

        def improved() -> bool:
            rows = query(first.db_path, "SELECT status FROM jobs WHERE id = ?", job)
            return bool(rows) and rows[0]["status"] == "improved"

        wait_for(improved, 20, "the job's status recorded")
    finally:
        first.request_stop()
        th.join(30)
    second, th = restartable()
    try:
        wait_for(lambda: second.snapshot()["policy"] == child.name, 20, "the child served")
        db = second.db_path
        swaps = query(db, "SELECT data FROM events WHERE topic = 'agent.policy.swapped'")
        assert [json.loads(x["data"])["policy"] for x in swaps] == [old, child.name]
        (row,) = query(db, "SELECT status, result_policy_id FROM jobs WHERE id = ?", job)
        assert (row["status"], row["result_policy_id"]) == ("done", child.name)
        (pol,) = query(db, "SELECT parent_id FROM policies WHERE id = ?", child.name)
        assert pol["parent_id"] == old
    finally:
        second.request_stop()
        th.join(30)
