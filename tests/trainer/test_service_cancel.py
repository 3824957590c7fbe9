"""The job protocol's ``cancel``: a running fine-tune stops at its next step and the worker takes
the next queued job, a queued job never trains, a finished one is left as it is, repeats are
answered the same, and a trainer killed after a cancel does not resume the job.

Real ROUTER/DEALER sockets on loopback, the real fine-tune recipe on the tiny network of
testkit/trainer.py with a budget it would not finish during the test ("forever"),
and for the restart a real ``robot-trainer serve`` process killed with SIGKILL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.jobwire import chunk_sha, manifest_of_dir, read_chunk
from testkit.trainer import (
    TINY_FINETUNE,
    Client,
    TrainerProcess,
    free_port,
    make_export,
    make_parent,
    running_service,
    wait_for,
    write_service_config,
)
from trainer import jobs as jl
from trainer.jobs import Job, JobState
from trainer.service import JobService

pytestmark = pytest.mark.timeout(90)
CHUNK = 65536
FOREVER = {**TINY_FINETUNE, "max_steps": 1_000_000, "patience": 1_000_000, "eval_every": 50}
"""The tiny recipe with a budget no test waits for: only a cancel (or shutdown) ends it."""


# -- the pure lifecycle -------------------------------------------------------------------------
def test_cancel_lifecycle_ends_unfinished_jobs_and_leaves_verdicts_alone() -> None:
    fresh = Job("a-1-abc", "a", 1, "checkerboard", "p0")
    queued, _ = jl.step(fresh, jl.DataComplete(seq=1))
    training, _ = jl.step(queued, jl.Started())
    for j in (fresh, queued, training):
        c, eff = jl.step(j, jl.Cancelled())
        assert c.state is JobState.CANCELLED and c.outcome == "cancelled"
        assert jl.Persist() in eff and jl.DropIncoming() in eff
        assert jl.step(c, jl.Cancelled()) == (c, [])  # idempotent
        assert jl.step(c, jl.Restarted(max_attempts=3)) == (c, [])  # never resumed
        assert jl.step(c, jl.Finished("improved", "b1")) == (c, [])  # a late verdict: dropped
        with pytest.raises(jl.JobError):
            jl.step(c, jl.Started())
    done, _ = jl.step(training, jl.Finished("improved", "b1"))
    assert jl.step(done, jl.Cancelled()) == (done, [])  # has a verdict: left as it is


# -- helpers ------------------------------------------------------------------------------------
def upload(c: Client, export: Path, store: Path, pid: str, job: int) -> str:
    """Submit ``export`` as agent job ``job`` and send every chunk the trainer asks for."""
    m = manifest_of_dir(export, CHUNK)
    condition = export.name.split("-")[0]
    head = c.request(
        "submit",
        {
            "job": job,
            "condition": condition,
            "parent_id": pid,
            "export": m.to_json(),
            "parent": manifest_of_dir(store / pid, CHUNK).to_json(),
        },
    ).header
    key = str(head["key"])
    src = {"export": export, "parent": store / pid}
    for blob, files in dict(head["need"]).items():
        for name, ranges in files.items():
            for a, b in ranges:
                for i in range(a, b):
                    data = read_chunk(src[blob] / name, i, CHUNK)
                    h = {"key": key, "blob": blob, "file": name, "index": i}
                    reply = c.request("chunk", {**h, "sha256": chunk_sha(data)}, data)
                    assert reply.type == "chunk_ok", reply
    return key


def state(c: Client, key: str) -> str:
    return str(c.request("status", {"key": key}).header["state"])


def wait_training_steps(c: Client, key: str, timeout_s: float = 30.0) -> None:
    """Wait for a progress push of ``key`` from the training loop (step > 0)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = c.recv(deadline - time.monotonic())
        if msg is None or msg.type != "progress" or msg.header.get("key") != key:
            continue
        if int(msg.header.get("step") or 0) > 0:
            return
    raise AssertionError(f"no training progress of {key}")


def cancel(c: Client, **target: Any) -> dict[str, Any]:
    reply = c.request("cancel", target)
    assert reply.type in ("cancelled", "error"), reply
    return dict(reply.header)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, str, list[Path]]:
    """A parent bundle in an agent store and three 200-grasp exports."""
    store = tmp_path / "agent-store"
    pid = make_parent(store)
    exports = [
        make_export(tmp_path / "x" / f"checkerboard-{i}", 200, "checkerboard", seed=i)
        for i in (1, 2, 3)
    ]
    return store, pid, exports


@pytest.fixture
def forever(tmp_path: Path) -> Iterator[JobService]:
    with running_service(tmp_path, FOREVER, CHUNK, progress_interval_s=0.0) as svc:
        yield svc


# -- over the socket ----------------------------------------------------------------------------
def test_cancel_stops_the_running_fine_tune_and_the_next_queued_job_starts(
    forever: JobService, data: tuple[Path, str, list[Path]]
) -> None:
    store, pid, exports = data
    c = Client(forever.endpoint, agent="robot-c")
    a, b, third = (upload(c, e, store, pid, i) for i, e in enumerate(exports, start=1))
    wait_training_steps(c, a)
    assert (state(c, b), state(c, third)) == ("queued", "queued")
    lineage = forever.store.lineage_root("robot-c")

    # a queued job: ended at once, its upload gone, never trained
    got = cancel(c, key=b)
    assert (got["cancelled"], got["previous"], got["state"]) == (True, "queued", "cancelled")
    assert not forever.store.job_dir(b).exists()

    # the running job: the row says so before the reply, the run stops at its next step
    t0 = time.monotonic()
    got = cancel(c, key=a)
    assert (got["cancelled"], got["previous"], got["state"]) == (True, "training", "cancelled")
    assert forever.store.get(a).state is JobState.CANCELLED  # type: ignore[union-attr]
    wait_for(lambda: state(c, third) == "training", 10, "the next queued job training")
    stopped_s = time.monotonic() - t0
    assert stopped_s < 5.0, stopped_s
    assert state(c, b) == "cancelled"  # skipped: FIFO went from a to the third job
    # nothing of the cancelled job is kept: upload, run directory, lineage entry
    assert not forever.store.job_dir(a).exists()
    assert not (lineage / a).exists()
    wait_for(lambda: (lineage / third / "source.json").is_file(), 10, "the next job's data")

    # idempotent: a repeated cancel says the same and changes nothing
    again = cancel(c, key=a)
    assert (again["cancelled"], again["previous"]) == (True, "cancelled")
    # the agent forgot the key: its job number names it
    assert cancel(c, job=2)["state"] == "cancelled"
    # nothing to fetch, and the agent's pings no longer list them
    assert c.request("fetch", {"key": a}).header["code"] == "not_ready"
    pong = c.request("ping", {}).header["jobs"]
    assert pong == {third: "training"}
    rows = {r["key"]: r for r in c.request("jobs", {}).header["jobs"]}
    assert rows[a]["attempts"] == 1 and rows[b]["attempts"] == 0
    assert rows[a]["finished_at"] is not None
    c.close()


def test_cancel_errors_and_a_finished_job_is_left_intact(
    tmp_path: Path, data: tuple[Path, str, list[Path]]
) -> None:
    store, pid, exports = data
    finetune = {**TINY_FINETUNE, "min_gain": -1.0}
    with running_service(tmp_path, finetune, CHUNK, progress_interval_s=0.0) as svc:
        c = Client(svc.endpoint, agent="robot-d")
        assert cancel(c, key="robot-d-9-abc")["code"] == "unknown_job"
        assert cancel(c, job=9)["code"] == "unknown_job"
        assert cancel(c)["code"] == "bad_request"  # neither key nor job
        other = Client(svc.endpoint, agent="robot-e")
        key = upload(c, exports[0], store, pid, 1)
        assert cancel(other, key=key)["code"] == "unknown_job"  # not another agent's job
        other.close()
        wait_for(lambda: state(c, key) == "done", 60, "the job done")
        got = cancel(c, key=key)
        assert (got["cancelled"], got["state"], got["previous"]) == (False, "done", "done")
        assert got["bundle_id"]
        # the result is still there and whole: fetch it, then acknowledge it
        res = c.request("fetch", {"key": key})
        assert res.type == "result" and res.header["bundle_id"] == got["bundle_id"]
        assert res.header["manifest"]["files"]
        assert cancel(c, key=key)["state"] == "delivered"
        assert c.request("ack", {"key": key}).header["state"] == "acknowledged"
        assert cancel(c, key=key)["cancelled"] is False
        c.close()


def test_trainer_killed_after_a_cancel_does_not_resume_the_job(
    tmp_path: Path, data: tuple[Path, str, list[Path]]
) -> None:
    store, pid, exports = data
    port = free_port()
    cfg = write_service_config(tmp_path / "t.toml", tmp_path / "trainer", port, finetune=FOREVER)
    tr = TrainerProcess(cfg, tmp_path / "trainer.log", port).start()
    try:
        c = Client(tr.endpoint, agent="robot-k")
        a = upload(c, exports[0], store, pid, 1)
        b = upload(c, exports[1], store, pid, 2)
        wait_training_steps(c, a)
        assert cancel(c, key=a)["cancelled"] is True
        tr.kill()  # at once: maybe before the run let go and its files were removed
        c.close()
        tr.start()
        c = Client(tr.endpoint, agent="robot-k")
        info = tr.jobs()
        wait_for(lambda: tr.jobs()["running"] == b, 20, "the next job training after restart")
        rows = {r["key"]: r for r in tr.jobs()["jobs"]}
        assert rows[a]["state"] == "cancelled" and rows[a]["attempts"] == 1, info
        assert rows[b]["state"] == "training"
        root = tmp_path / "trainer"
        assert not (root / "jobs" / a).exists()
        assert not (root / "lineages" / "robot-k" / a).exists()
        assert cancel(c, key=a)["previous"] == "cancelled"
        c.close()
    finally:
        assert tr.stop() == 0
