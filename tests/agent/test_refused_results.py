"""A refused bundle is a verdict on its id only when its bytes hash to that id (issue 17,
item 2): a corrupted copy must not bar the genuine bundle for ever, and a trained job whose
result is refused ends failed (the parent serves, the condition trains again), never stuck
in TRAINING, also across a restart.

The daemon runs in-process on the fake driver with real sockets, SQLite and ONNX Runtime.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.ctl import request
from agent.grasplog import GraspLog
from testkit.daemon import Restart, Running, query, training_on_a_job, wait_match
from testkit.fakes import broken_bundle, make_bundle
from testkit.trainer import wait_for

pytestmark = pytest.mark.timeout(90)


def corrupted_copy(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` (same meta.json, same claimed id) whose weights fail their hash."""
    shutil.copytree(bundle, dest)
    weights = dest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes() + b"!")
    return dest


def status_of(db: Path, policy_id: str) -> str | None:
    rows = query(db, "SELECT status FROM policies WHERE id = ?", policy_id)
    return str(rows[0]["status"]) if rows else None


def test_corrupted_copy_promoted_first_does_not_bar_the_genuine_bundle(
    start_daemon: Callable[..., Running], tmp_path: Path
) -> None:
    r = start_daemon()
    sub = r.subscriber()
    genuine = make_bundle(tmp_path / "genuine", seed=5)
    bad = corrupted_copy(genuine, tmp_path / "bad" / genuine.name)
    assert r.ctl("promote", id=str(bad))["ok"]
    refused = wait_match(sub, "agent.policy.rejected", lambda d: d.get("source") == str(bad))
    assert refused["reason"] == "hash_mismatch" and refused["policy"] == genuine.name
    assert status_of(r.daemon.db_path, genuine.name) is None  # no verdict on the id
    assert r.ctl("promote", id=str(genuine))["ok"]
    swapped = wait_match(sub, "agent.policy.swapped", lambda d: d["policy"] == genuine.name)
    assert swapped["reason"] == "promote"
    r.wait_for(lambda s: s["policy"] == genuine.name)
    assert status_of(r.daemon.db_path, genuine.name) == "active"


def test_a_bundle_failing_after_its_hash_check_is_rejected_under_its_id(
    start_daemon: Callable[..., Running], tmp_path: Path
) -> None:
    """The other half of the rule: bytes that are the bundle and fail are its verdict."""
    r = start_daemon()
    sub = r.subscriber()
    bad = broken_bundle(tmp_path / "broken")  # hashes fine, Q outside [0, 1]
    assert r.ctl("promote", id=str(bad))["ok"]
    refused = wait_match(sub, "agent.policy.rejected", lambda d: d.get("source") == str(bad))
    assert refused["reason"] == "out_of_range"
    assert status_of(r.daemon.db_path, bad.name) == "rejected"


def test_corrupted_trained_result_fails_its_job_and_the_genuine_one_serves_after_the_next(
    start_daemon: Callable[..., Running], tmp_path: Path
) -> None:
    r = start_daemon(
        lifecycle={"exploration_grasps": 5}, probation={"alpha": 0.001}, rounds={"race": False}
    )
    sub, first, old = training_on_a_job(r)
    child = make_bundle(tmp_path / "trained", seed=9, parent_id=old)
    bad = corrupted_copy(child, tmp_path / "bad" / child.name)
    r.daemon.offer_trained(bad, first)
    r.daemon.job_update(first, "improved", {"bundle_id": child.name, "path": str(bad)})
    wait_match(sub, "agent.policy.rejected", lambda d: d.get("source") == str(bad))
    alarm = wait_match(sub, "agent.alarm", lambda d: d["kind"] == "job_failed")
    assert f"job {first} failed" in alarm["reason"]
    # the condition trains again: the next job is submitted and its genuine result serves
    second = wait_match(sub, "agent.job", lambda d: d["status"] == "queued" and d["job"] != first)
    r.wait_for(lambda s: s["phase"] == "training" and s["job"] == second["job"])
    r.daemon.offer_trained(child, second["job"])
    wait_match(sub, "agent.policy.swapped", lambda d: d["policy"] == child.name)
    r.wait_for(lambda s: s["policy"] == child.name and s["phase"] == "serving")
    db = r.daemon.db_path
    jobs = {x["id"]: x["status"] for x in query(db, "SELECT id, status FROM jobs")}
    assert jobs[first] == "failed" and jobs[second["job"]] == "done"
    assert status_of(db, child.name) == "active"


def test_trained_result_rejected_earlier_ends_its_job_also_across_a_restart(
    tmp_path: Path, restartable: Restart
) -> None:
    """The result of a job is a bundle rejected before (it failed probation once): the job
    ends failed and the daemon leaves TRAINING, at once and when it restarts on such a job
    (result in the store, row "improved": the state a daemon stopped in before the fix)."""

    def reject(db: Path, pid: str) -> None:
        log = GraspLog(db)
        log.open()
        try:
            log.upsert_policy(pid, "", "rejected", reason="probation_failed: worse than parent")
        finally:
            log.close()

    d, th = restartable()
    try:
        assert request(d.endpoints["commands"], "mark-condition", {"name": "offset"})["ok"]
        wait_for(lambda: d.snapshot()["phase"] == "training", 20, "the first job")
        job, old = int(d.snapshot()["job"]), str(d.snapshot()["policy"])
        child = make_bundle(tmp_path / "trained", seed=9, parent_id=old)
        d._post(lambda: reject(d.db_path, child.name))  # on the control thread, in order
        d.offer_trained(child, job)
        wait_for(lambda: d.snapshot()["job"] != job, 20, "the first job ended")
        (row,) = query(d.db_path, "SELECT status FROM jobs WHERE id = ?", job)
        assert row["status"] == "failed" and d.snapshot()["policy"] == old
        wait_for(lambda: d.snapshot()["phase"] == "training", 20, "a second job")
        job2 = int(d.snapshot()["job"])
        assert job2 != job
        # the daemon stops after the second job's result (the same bundle) was imported
        shutil.copytree(child, d.store / child.name, dirs_exist_ok=True)
        d.job_update(job2, "improved", {"bundle_id": child.name, "path": str(child)})
        wait_for(
            lambda: (
                query(d.db_path, "SELECT status FROM jobs WHERE id = ?", job2)[0]["status"]
                == "improved"
            ),
            20,
            "the second job's status recorded",
        )
    finally:
        d.request_stop()
        th.join(30)
    d, th = restartable()
    try:
        wait_for(lambda: d.snapshot()["job"] != job2, 20, "the second job ended at start")
        (row,) = query(d.db_path, "SELECT status FROM jobs WHERE id = ?", job2)
        assert row["status"] == "failed"
        assert d.snapshot()["policy"] == old and status_of(d.db_path, child.name) == "rejected"
        assert query(d.db_path, "SELECT data FROM events WHERE topic = 'agent.error'") == []
    finally:
        d.request_stop()
        th.join(30)
