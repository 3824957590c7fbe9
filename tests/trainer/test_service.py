"""The trainer job service: the pure job lifecycle, the transfer helpers, and the protocol
over a real ROUTER socket on loopback (checksums, size caps, on-disk before acknowledged)."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.jobwire import (
    AGENT_TO_TRAINER,
    TRAINER_TO_AGENT,
    Manifest,
    PartFile,
    chunk_sha,
    from_ranges,
    manifest_of_dir,
    to_ranges,
)
from agent.wire import WireError
from plumbing.config_loader import ConfigError
from testkit.trainer import (
    REPO,
    TINY_FINETUNE,
    Client,
    free_port,
    make_export,
    make_parent,
    running_service,
)
from trainer import jobs as jl
from trainer.jobs import Job, JobState
from trainer.service import JobService
from trainer.service_config import service_config_from_dict

pytestmark = pytest.mark.timeout(60)
CHUNK = 16384


# -- the pure lifecycle -------------------------------------------------------------------------
def _job() -> Job:
    return Job("a-1-abc", "a", 1, "checkerboard", "p0")


def test_job_lifecycle_happy_path_and_idempotent_repeats() -> None:
    j, eff = jl.step(_job(), jl.DataComplete(seq=1))
    assert j.state is JobState.QUEUED and j.seq == 1 and jl.Schedule() in eff
    assert jl.step(j, jl.DataComplete(seq=2)) == (j, [])  # duplicate last chunk
    j, _ = jl.step(j, jl.Started())
    assert j.state is JobState.TRAINING and j.attempts == 1
    j, eff = jl.step(j, jl.Finished("improved", "b1"))
    assert j.state is JobState.DONE and j.bundle_id == "b1" and jl.DropIncoming() in eff
    j, _ = jl.step(j, jl.Fetched())
    assert j.state is JobState.DELIVERED
    assert jl.step(j, jl.Fetched()) == (j, [])
    j, _ = jl.step(j, jl.Acknowledged())
    assert j.state is JobState.ACKNOWLEDGED
    assert jl.step(j, jl.Acknowledged()) == (j, [])


def test_job_restart_requeues_training_until_max_attempts() -> None:
    j, _ = jl.step(_job(), jl.DataComplete(seq=4))
    j, _ = jl.step(j, jl.Started())
    j, eff = jl.step(j, jl.Restarted(max_attempts=2))
    assert j.state is JobState.QUEUED and j.seq == 4 and eff == [jl.Persist()]  # same place
    j, _ = jl.step(j, jl.Started())
    j, _ = jl.step(j, jl.Restarted(max_attempts=2))
    assert j.state is JobState.FAILED and "2 training runs" in j.detail


def test_clean_shutdown_requeues_without_counting_a_crash() -> None:
    j, _ = jl.step(_job(), jl.DataComplete(seq=1))
    for _ in range(5):  # five clean restarts mid-training never fail the job
        j, _ = jl.step(j, jl.Started())
        j, eff = jl.step(j, jl.Interrupted())
        assert j.state is JobState.QUEUED and j.attempts == 0 and eff == [jl.Persist()]


def test_job_illegal_events_raise() -> None:
    with pytest.raises(jl.JobError):
        jl.step(_job(), jl.Started())  # data not complete
    with pytest.raises(jl.JobError):
        jl.step(_job(), jl.Acknowledged())  # nothing to acknowledge
    j, _ = jl.step(_job(), jl.DataComplete(seq=1))
    j, _ = jl.step(j, jl.Started())
    with pytest.raises(jl.JobError):
        jl.step(j, jl.Finished("improved", ""))  # improved without a bundle


# -- transfer helpers ---------------------------------------------------------------------------
def test_ranges_round_trip_and_bounds() -> None:
    idx = [0, 1, 2, 5, 7, 8]
    assert to_ranges(idx) == [[0, 3], [5, 6], [7, 9]]
    assert from_ranges(to_ranges(idx), 9) == idx
    with pytest.raises(WireError):
        from_ranges([[0, 10]], 9)


def test_partfile_rejects_a_whole_file_checksum_mismatch(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(bytes(range(256)) * 100)
    m = manifest_of_dir(src, 4096)
    entry = m.entry("a.bin")
    pf = PartFile(tmp_path / "dst" / "a.bin", entry, m.chunk_bytes)
    data = (src / "a.bin").read_bytes()
    for i in range(m.chunks("a.bin")):
        pf.write(i, data[i * 4096 : (i + 1) * 4096])
    assert pf.finish() and (tmp_path / "dst" / "a.bin").read_bytes() == data
    bad = PartFile(tmp_path / "dst2" / "a.bin", entry, m.chunk_bytes)
    for i in range(m.chunks("a.bin")):
        bad.write(i, b"\0" * len(data[i * 4096 : (i + 1) * 4096]))
    assert not bad.finish() and not bad.part.exists()


def test_manifest_rejects_unsafe_names_and_oversize() -> None:
    ok = {"chunk_bytes": 4096, "files": [{"name": "a.npy", "size": 10, "sha256": "0" * 64}]}
    assert Manifest.from_json(ok, max_chunk_bytes=4096, max_total_bytes=100).total_bytes == 10
    for name in ("../x", "a/b", ".hidden", ""):
        bad = {**ok, "files": [{"name": name, "size": 1, "sha256": "0" * 64}]}
        with pytest.raises(WireError):
            Manifest.from_json(bad, max_chunk_bytes=4096, max_total_bytes=100)
    with pytest.raises(WireError, match="exceeds the cap"):
        Manifest.from_json(ok, max_chunk_bytes=4096, max_total_bytes=5)


# -- the protocol over a real socket ------------------------------------------------------------
@pytest.fixture
def service(tmp_path: Path) -> Iterator[JobService]:
    with running_service(tmp_path, TINY_FINETUNE, CHUNK) as svc:
        yield svc


def _submit(c: Client, tmp_path: Path) -> tuple[dict[str, object], Path, Manifest]:
    store = tmp_path / "store"
    pid = make_parent(store)
    export = make_export(tmp_path / "export", 8, "checkerboard")
    m = manifest_of_dir(export, CHUNK)
    reply = c.request(
        "submit",
        {
            "job": 1,
            "condition": "checkerboard",
            "parent_id": pid,
            "export": m.to_json(),
            "parent": manifest_of_dir(store / pid, CHUNK).to_json(),
        },
    )
    assert reply.type == "accepted", reply
    return reply.header, export, m


def test_job_is_on_disk_before_it_is_accepted(service: JobService, tmp_path: Path) -> None:
    c = Client(service.endpoint, agent="robot-x")
    head, _, _ = _submit(c, tmp_path)
    with sqlite3.connect(service.store.root / "jobs.db") as db:
        rows = db.execute("SELECT key, state, agent FROM jobs").fetchall()
    assert rows == [(head["key"], "receiving", "robot-x")]
    assert set(head["need"]) == {"export", "parent"}  # type: ignore[arg-type]
    c.close()


def test_corrupted_chunk_rejected_by_checksum_and_resent(
    service: JobService, tmp_path: Path
) -> None:
    c = Client(service.endpoint, agent="robot-x")
    head, export, m = _submit(c, tmp_path)
    data = (export / "images.npy").read_bytes()[:CHUNK]
    base = {"key": head["key"], "blob": "export", "file": "images.npy", "index": 0}
    corrupted = bytes([data[0] ^ 0xFF]) + data[1:]
    bad = c.request("chunk", {**base, "sha256": chunk_sha(data)}, corrupted)
    assert bad.type == "error" and bad.header["code"] == "checksum"
    again = c.request(
        "submit", {"job": 1, "condition": "checkerboard", "parent_id": "x", "export": m.to_json()}
    )
    assert again.header["need"]["export"]["images.npy"][0] == [0, m.chunks("images.npy")]
    good = c.request("chunk", {**base, "sha256": chunk_sha(data)}, data)
    assert good.type == "chunk_ok" and good.header["credit"] == 1
    dup = c.request("chunk", {**base, "sha256": chunk_sha(data)}, data)
    assert dup.type == "chunk_ok"
    counters = c.request("jobs", {}).header["counters"]
    assert counters["chunks.rejected"] == 1 and counters["chunks.written"] == 1
    assert counters["chunks.duplicate"] == 1
    c.close()


def test_oversize_messages_refused(service: JobService, tmp_path: Path) -> None:
    c = Client(service.endpoint, agent="robot-x", max_bytes=1 << 24)
    head, export, _ = _submit(c, tmp_path)
    data = (export / "images.npy").read_bytes()[: CHUNK + 100]
    base = {"key": head["key"], "blob": "export", "file": "images.npy", "index": 0}
    # Over the job's chunk size but under ZMQ_MAXMSGSIZE: answered too_large, nothing written.
    big = c.request("chunk", {**base, "sha256": chunk_sha(data)}, data)
    assert big.type == "error" and big.header["code"] == "too_large"
    # A frame over ZMQ_MAXMSGSIZE (chunk cap + 64 KiB): libzmq drops the connection unanswered.
    huge = bytes(CHUNK + 70000)
    c.send("chunk", {**base, "sha256": chunk_sha(huge)}, huge)
    assert c.recv(1.0) is None
    c.close()
    other = Client(service.endpoint, agent="robot-y")  # the service serves on
    assert other.request("ping", {}).type == "pong"
    counters = other.request("jobs", {}).header["counters"]
    assert counters.get("chunks.written", 0) == 0
    other.close()


def test_bad_requests_answered_with_error_codes(service: JobService) -> None:
    c = Client(service.endpoint, agent="robot-x")
    assert c.request("hello", {"protocol": 2}).header["code"] == "bad_protocol"
    assert c.request("hello", {"protocol": True}).header["code"] == "bad_protocol"
    assert c.request("status", {"key": "nope-1-x"}).header["code"] == "unknown_job"
    assert c.request("launch", {}).header["code"] == "unknown_type"
    evil = c.request("ping", {"agent": "../../etc"})
    assert evil.type == "error" and evil.header["code"] == "bad_request"
    welcome = c.request("hello", {"protocol": 1})
    assert welcome.type == "welcome" and welcome.header["max_chunk_bytes"] == CHUNK
    c.close()


def test_non_loopback_bind_without_curve_refused(tmp_path: Path) -> None:
    cfg = service_config_from_dict(
        {"service": {"endpoint": f"tcp://0.0.0.0:{free_port()}", "data_dir": str(tmp_path)}}
    )
    with pytest.raises(ConfigError, match="CURVE"):
        JobService(cfg).start()


def test_serve_process_notifies_systemd_and_stops_on_sigterm(tmp_path: Path) -> None:
    import socket as pysocket
    import time

    from testkit.trainer import TrainerProcess, write_service_config

    addr = str(tmp_path / "notify.sock")
    sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(0.2)
    port = free_port()
    cfg = write_service_config(tmp_path / "t.toml", tmp_path / "trainer", port)
    env = {"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "400000"}
    tr = TrainerProcess(cfg, tmp_path / "trainer.log", port, env=env).start()
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in seen):
        with contextlib.suppress(TimeoutError):
            seen.append(sock.recv(4096).decode())
    assert seen and "READY=1" in seen[0], seen
    assert any("WATCHDOG=1" in m for m in seen), seen
    assert tr.stop() == 0
    sock.close()


def test_whole_file_checksum_mismatch_makes_every_chunk_come_again(
    service: JobService, tmp_path: Path
) -> None:
    from agent.jobwire import FileEntry

    store = tmp_path / "store"
    pid = make_parent(store)
    export = make_export(tmp_path / "export", 8, "checkerboard")
    m = manifest_of_dir(export, CHUNK)
    data = (export / "rewards.npy").read_bytes()
    lying = Manifest(  # the sender's whole-file hash of rewards.npy disagrees with its bytes
        tuple(
            FileEntry(f.name, f.size, "0" * 64) if f.name == "rewards.npy" else f for f in m.files
        ),
        CHUNK,
    )
    c = Client(service.endpoint, agent="robot-x")
    head = c.request(
        "submit",
        {
            "job": 2,
            "condition": "checkerboard",
            "parent_id": pid,
            "export": lying.to_json(),
            "parent": manifest_of_dir(store / pid, CHUNK).to_json(),
        },
    ).header
    assert lying.chunks("rewards.npy") == 1
    chunk = {
        "key": head["key"],
        "blob": "export",
        "file": "rewards.npy",
        "index": 0,
        "sha256": chunk_sha(data),
    }
    reply = c.request("chunk", chunk, data)
    assert reply.type == "error" and reply.header["code"] == "whole_checksum"
    again = c.request(
        "submit",
        {"job": 2, "condition": "checkerboard", "parent_id": pid, "export": lying.to_json()},
    )
    assert again.header["need"]["export"]["rewards.npy"] == [[0, 1]]  # asked for again
    assert not (service.store.incoming_dir(str(head["key"]), "export") / "rewards.npy").exists()
    c.close()


def test_abandoned_upload_is_failed_and_its_files_deleted(tmp_path: Path) -> None:
    import time

    cfg = service_config_from_dict(
        {
            "service": {
                "endpoint": "tcp://127.0.0.1:*",
                "data_dir": str(tmp_path / "trainer"),
                "max_chunk_bytes": CHUNK,
                "abandon_upload_s": 0.5,
            },
            "finetune": TINY_FINETUNE,
        }
    )
    svc = JobService(cfg)
    svc.start()
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    try:
        c = Client(svc.endpoint, agent="robot-gone")
        head, export, _ = _submit(c, tmp_path)
        data = (export / "images.npy").read_bytes()[:CHUNK]
        chunk = {
            "key": head["key"],
            "blob": "export",
            "file": "images.npy",
            "index": 0,
            "sha256": chunk_sha(data),
        }
        assert c.request("chunk", chunk, data).type == "chunk_ok"
        incoming = svc.store.incoming_dir(str(head["key"]), "export")
        assert any(incoming.iterdir())
        time.sleep(0.7)
        svc.desk.next_expiry = 0.0  # the next loop turn checks now, not in a minute
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            st = c.request("status", {"key": head["key"]}).header
            if st["state"] == "failed":
                break
            time.sleep(0.05)
        assert st["state"] == "failed" and "abandoned" in st["detail"]
        assert not incoming.exists()
        c.close()
    finally:
        svc.stop.set()
        t.join(30)
        svc.close()


def test_progress_with_non_finite_values_is_made_json_ready() -> None:
    """Regression: a fine-tune progress dict with a NaN score crashed the service loop."""
    from agent.wire import encode
    from trainer.service.server import json_ready

    info = {"step": 3, "val": {"score_new": float("nan"), "loss": float("inf")}, "ok": [1.5]}
    clean = json_ready(info)
    assert clean == {"step": 3, "val": {"score_new": None, "loss": None}, "ok": [1.5]}
    encode("progress", clean)  # would raise WireError with the raw dict


def test_serve_stops_cleanly_on_a_sigterm_during_its_torch_import(tmp_path: Path) -> None:
    """Regression: ``robot-trainer serve`` installed its stop handler after importing torch
    (seconds), so a SIGTERM then killed it (status -15). An import hook holds the torch import
    for 3 s and says when it began; the SIGTERM lands inside it."""
    import os
    import signal
    import socket as pysocket
    import subprocess
    import sys
    import time

    from testkit.trainer import REPO, write_service_config

    cfg = write_service_config(tmp_path / "t.toml", tmp_path / "trainer", free_port())
    mark = tmp_path / "importing-torch"
    prog = "\n".join(
        [
            "import pathlib, sys, time",
            "class SlowTorch:",
            "    def find_spec(self, name, path=None, target=None):",
            "        if name == 'torch':",
            f"            pathlib.Path({str(mark)!r}).write_text('now')",
            "            time.sleep(3)",
            "sys.meta_path.insert(0, SlowTorch())",
            "from trainer.cli import main",
            f"sys.exit(main(['serve', '--config', {str(cfg)!r}]))",
        ]
    )
    addr = str(tmp_path / "notify.sock")
    sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(0.2)
    env = {**os.environ, "NOTIFY_SOCKET": addr, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", prog],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not mark.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    seen: list[str] = []
    with contextlib.suppress(TimeoutError):
        while True:
            seen.append(sock.recv(4096).decode())
    sock.close()
    assert not any("READY=1" in m.split("\n") for m in seen), seen
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in err, err


def test_bad_version_reply_echoes_the_request_rid(service: JobService) -> None:
    c = Client(service.endpoint, agent="robot-x")
    head = {"v": 2, "type": "ping", "agent": "robot-x", "rid": 41}
    c.sock.send_multipart([json.dumps(head).encode()])
    reply = c.recv(5.0)
    assert reply is not None and reply.type == "error"
    assert reply.header["code"] == "bad_version"
    assert reply.header["rid"] == 41 and reply.header["re"] == "ping"
    c.close()


def test_protocol_lists_match_the_service_and_the_manual(service: JobService) -> None:
    """jobwire's request list is what the service handles, and the manual's request table
    lists each request and only reply types from jobwire's list."""
    assert set(AGENT_TO_TRAINER) == set(service.requests.table())
    manual = (REPO / "docs" / "trainer-service.md").read_text()
    table = manual[manual.index("| request (agent -> trainer)") :].split("\n\n")[0]
    rows = [re.split(r"(?<!\\)\|", r) for r in table.splitlines()[2:]]  # "\|" is a cell's
    assert [r[1].strip().strip("`") for r in rows] == list(AGENT_TO_TRAINER)
    replies = {r[-2].strip().split()[0].strip("`") for r in rows}
    assert replies <= set(TRAINER_TO_AGENT), replies
