"""Result bundles coming back from the trainer: one that cannot be verified is given up
(issue 17, item 3), and a staged copy is removed once the daemon is done with it (item 5).

A hostile trainer (a real ZeroMQ ROUTER on loopback, on its own thread, speaking job
protocol 1) says every job is done and serves a result bundle that never verifies: (a) every
chunk with a wrong sha256, (b) a whole file whose sha256 differs from the manifest, (c) data
frames over the link's size cap (libzmq drops the line unanswered). The link must fail the
job within ``trainer.fetch_retries`` rounds, with backoff, tell the trainer (the ``ack``
carries ``refused``) and leave nothing staged; the daemon (fake driver, the link attached as
``robot-agent run`` attaches it) ends the job failed, serves the parent and grasps throughout.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from agent.ctl import request
from agent.jobwire import chunk_sha, manifest_of_dir, read_chunk
from agent.link import TrainerLink
from agent.wire import WireError, decode, encode
from testkit.daemon import linked_config, linked_daemon, query, serve, stop_linked
from testkit.fakes import FakeDriver, broken_bundle, make_bundle
from testkit.trainer import make_export, wait_for
from tests.agent.test_trainer_link import make_link

pytestmark = pytest.mark.timeout(90)

CHUNK = 4096
CREDIT = 4
RETRIES = 3
MODES = ("bad_chunk", "bad_file", "oversize")


class HostileTrainer:
    """A ROUTER that answers like a trainer whose every job is done, with a bad result."""

    def __init__(self, bundle: Path, mode: str) -> None:
        self.bundle = bundle
        self.mode = mode
        self.manifest = manifest_of_dir(bundle, CHUNK)
        self.seen: dict[str, int] = {}
        self.acks: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)
        self._ctx.term()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            ident, *frames = self._sock.recv_multipart()
            try:
                msg = decode(frames, max_bytes=1 << 22)
            except WireError:
                continue
            self.seen[msg.type] = self.seen.get(msg.type, 0) + 1
            reply = self._answer(msg.type, msg.header)
            if reply is not None:
                self._sock.send_multipart([ident, *reply])

    def _job(self, h: dict[str, Any], state: str) -> dict[str, Any]:
        job = int(h["job"]) if "job" in h else int(str(h.get("key", "hostile-0")).split("-")[1])
        return {
            "rid": h.get("rid"),
            "key": f"hostile-{job}",
            "job": job,
            "state": state,
            "outcome": "improved",
            "bundle_id": self.bundle.name,
            "detail": "",
        }

    def _answer(self, t: str, h: dict[str, Any]) -> list[bytes] | None:
        if t == "hello":
            head = {"rid": h.get("rid"), "protocol": 1, "max_chunk_bytes": CHUNK, "credit": CREDIT}
            return encode("welcome", head)
        if t == "ping":
            return encode("pong", {"rid": h.get("rid"), "jobs": {}})
        if t == "submit":
            return encode("accepted", {**self._job(h, "done"), "need": {}, "credit": CREDIT})
        if t == "status":
            return encode("job", self._job(h, "delivered"))
        if t == "fetch":
            manifest = self.manifest.to_json()
            if self.mode == "bad_file":  # chunks verify, the whole model file never does
                for f in manifest["files"]:
                    if f["name"] == "model.onnx":
                        f["sha256"] = "0" * 64
            return encode("result", {**self._job(h, "delivered"), "manifest": manifest})
        if t == "get":
            file, index = str(h["file"]), int(h["index"])
            data = read_chunk(self.bundle / file, index, CHUNK)
            sha = chunk_sha(data)
            if self.mode == "bad_chunk":
                sha = "f" * 64
            elif self.mode == "oversize":
                data = bytes(256 * 1024)  # over the link's cap: the line is dropped
            head = {"rid": h.get("rid"), "key": h.get("key"), "file": file, "index": index}
            arrays = {"data": np.frombuffer(data, np.uint8)}
            return encode("data", {**head, "sha256": sha}, arrays, max_bytes=1 << 22)
        if t == "ack":
            self.acks.append(dict(h))
            return encode("acked", self._job(h, "acknowledged"))
        if t == "cancel":
            return encode("cancelled", {**self._job(h, "delivered"), "cancelled": False})
        return None

    def requests_bound(self) -> int:
        """Most ``get`` requests a link within its budget may send: every round asks for at
        most the whole bundle or a credit's worth, whichever is more, and there are at most
        RETRIES + 1 rounds."""
        return max(self.manifest.total_chunks(), CREDIT) * (RETRIES + 1)


LINK = {
    "fetch_retries": RETRIES,
    "fetch_backoff_s": 0.05,
    "backoff_max_s": 1.0,
    "chunk_bytes": 65536,
    "heartbeat_s": 0.2,
    "timeout_s": 1.0,
}


@pytest.mark.parametrize("mode", MODES)
def test_link_gives_up_a_result_it_cannot_verify_within_its_retry_budget(
    tmp_path: Path, mode: str
) -> None:
    store = tmp_path / "agent" / "policies"
    parent = make_bundle(store, seed=0)
    result = make_bundle(tmp_path / "trainer-side", seed=7, parent_id=parent.name)
    hostile = HostileTrainer(result, mode)
    link, rec = make_link(tmp_path / "agent", hostile.endpoint, "robot-h", store, **LINK)
    try:
        t0 = time.monotonic()
        link.submit(1, make_export(tmp_path / "x" / "job-1", 20, "glare"), parent.name)
        wait_for(lambda: "failed" in rec.of(1), 30, f"job 1 failed ({mode})")
        took = time.monotonic() - t0
        wait_for(lambda: link.phases()[1] == "done", 10, "the refusal acknowledged")
        assert not rec.results  # nothing was handed on
        assert link.stats["fetch_failures"] == RETRIES + 1
        assert hostile.seen.get("get", 0) <= hostile.requests_bound(), hostile.seen
        assert hostile.seen.get("fetch", 0) <= RETRIES + 2, hostile.seen
        # bounded time: each round waits at most a stall (timeout_s) and its backoff
        assert took < (RETRIES + 1) * (1.0 + 0.4) + 5.0
        (detail,) = [d for j, s, d in rec.statuses if j == 1 and s == "failed"]
        assert f"refused after {RETRIES + 1} tries" in detail["error"]
        (ack,) = hostile.acks[:1]
        assert "refused after" in ack["refused"]
        assert not (tmp_path / "agent" / "trainer-link" / "staging" / "job-1").exists()
    finally:
        link.close()
        hostile.close()


@pytest.mark.parametrize("mode", MODES)
def test_daemon_job_fails_on_an_unverifiable_result_and_grasping_goes_on(
    tmp_path: Path, mode: str
) -> None:
    incoming = tmp_path / "incoming"
    base = make_bundle(incoming, seed=0)
    result = make_bundle(tmp_path / "trainer-side", seed=7, parent_id=base.name)
    hostile = HostileTrainer(result, mode)
    cfg = linked_config(tmp_path, base, hostile.endpoint, "robot-h", 20, LINK)
    daemon, link = linked_daemon(cfg, FakeDriver(p_success=0.5, grasp_time_s=0.002))
    th = serve(daemon)
    try:
        assert request(daemon.endpoints["commands"], "mark-condition", {"name": "glare"})["ok"]
        wait_for(lambda: daemon.snapshot()["phase"] == "training", 20, "job 1 submitted")
        grasps: list[int] = []

        def job_failed() -> bool:
            grasps.append(int(daemon.snapshot()["grasps"]))
            rows = query(daemon.db_path, "SELECT status FROM jobs WHERE id = 1")
            return bool(rows) and rows[0]["status"] == "failed"

        wait_for(job_failed, 30, f"job 1 failed in the daemon ({mode})")
        wait_for(lambda: daemon.snapshot()["job"] != 1, 5, "the lifecycle left job 1")
        assert daemon.snapshot()["policy"] == base.name  # the parent serves on
        # the daemon grasped throughout: its count rose while the link fought the trainer
        assert len(grasps) >= 2 and grasps[-1] > grasps[0]
        assert hostile.seen.get("get", 0) <= hostile.requests_bound()
        # the condition trains again: exploration went on and a second job was submitted
        wait_for(lambda: daemon.snapshot()["job"] not in (None, 1), 30, "a second job")
        assert query(daemon.db_path, "SELECT data FROM events WHERE topic = 'agent.error'") == []
    finally:
        stop_linked(daemon, th, link)
        hostile.close()


# -- the staged copy of a result (issue 17, item 5) ------------------------------------------


def staged(root: Path, job: int) -> Path:
    return root / "trainer-link" / "staging" / f"job-{job}"


def honest_trainer(tmp_path: Path) -> tuple[Path, Path, Path, HostileTrainer]:
    """The agent's policy store under ``tmp_path/agent`` with a parent in it, and a trainer
    that serves a sound child of it: the store, the parent, the child and the trainer."""
    store = tmp_path / "agent" / "policies"
    parent = make_bundle(store, seed=0)
    result = make_bundle(tmp_path / "trainer-side", seed=7, parent_id=parent.name)
    return store, parent, result, HostileTrainer(result, "honest")


def test_released_result_leaves_no_staged_copy_and_is_never_offered_again(
    tmp_path: Path,
) -> None:
    store, parent, result, honest = honest_trainer(tmp_path)
    link, rec = make_link(tmp_path / "agent", honest.endpoint, "robot-h", store, **LINK)
    try:
        link.submit(1, make_export(tmp_path / "x" / "job-1", 20, "glare"), parent.name)
        wait_for(lambda: bool(rec.results), 20, "the result handed on")
        assert (staged(tmp_path / "agent", 1) / result.name).is_dir()
        link.release(1)  # the daemon imported or refused it
        wait_for(lambda: not staged(tmp_path / "agent", 1).exists(), 5, "the staged copy gone")
    finally:
        link.close()
    again, rec2 = make_link(tmp_path / "agent", honest.endpoint, "robot-h", store, **LINK)
    try:
        time.sleep(0.5)
        assert not rec2.results  # not offered again (it was up to 3 times)
    finally:
        again.close()
        honest.close()


def test_result_never_imported_after_its_offers_fails_the_job_at_start(tmp_path: Path) -> None:
    """The daemon went down before importing the result, at every offer: the link does not
    leave the job "improved" for ever (the daemon would wait in TRAINING); it says failed."""
    store, parent, _, honest = honest_trainer(tmp_path)
    link, rec = make_link(tmp_path / "agent", honest.endpoint, "robot-h", store, **LINK)
    try:
        link.submit(1, make_export(tmp_path / "x" / "job-1", 20, "glare"), parent.name)
        wait_for(lambda: bool(rec.results), 20, "the result handed on")
        wait_for(lambda: link.phases()[1] == "done", 10, "the result acknowledged")
        link.close()
        for _ in range(2):  # offered again at the next two starts, never imported
            link, again = make_link(tmp_path / "agent", honest.endpoint, "robot-h", store, **LINK)
            wait_for(lambda a=again: bool(a.results), 5, "the result offered again")  # type: ignore[misc]
            link.close()
        link, rec = make_link(tmp_path / "agent", honest.endpoint, "robot-h", store, **LINK)
        wait_for(lambda: "failed" in rec.of(1), 5, "the job failed")
        assert not rec.results and not staged(tmp_path / "agent", 1).exists()
        (detail,) = [d for j, s, d in rec.statuses if j == 1 and s == "failed"]
        assert "never imported (offered 3 times)" in detail["error"]
    finally:
        link.close()
        honest.close()


def test_daemon_refusing_a_trained_result_cleans_the_staged_copy(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    base = make_bundle(incoming, seed=0)
    bad = broken_bundle(tmp_path / "trainer-side")  # verifies on the wire, Q out of range
    honest = HostileTrainer(bad, "honest")
    cfg = linked_config(tmp_path, base, honest.endpoint, "robot-h", 20, LINK)
    daemon, link = linked_daemon(cfg, FakeDriver(p_success=0.5, grasp_time_s=0.002))
    th = serve(daemon)
    root = cfg.data_path("")
    try:
        assert request(daemon.endpoints["commands"], "mark-condition", {"name": "glare"})["ok"]

        def refused() -> bool:
            rows = query(daemon.db_path, "SELECT status FROM jobs WHERE id = 1")
            return bool(rows) and rows[0]["status"] == "failed"

        wait_for(refused, 30, "job 1's result refused")
        wait_for(lambda: not staged(root, 1).exists(), 5, "the staged copy removed")
        assert daemon.snapshot()["policy"] == base.name
    finally:
        stop_linked(daemon, th, link)
    again = TrainerLink(cfg, daemon.store, lambda p, j: offered.append(j), lambda *a: None)
    offered: list[int] = []
    again.start()
    try:
        time.sleep(0.5)
        assert 1 not in offered  # never re-validated at a start
    finally:
        again.close()
        honest.close()
