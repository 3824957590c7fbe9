"""The daemon as a real process, killed: SIGKILL while logging grasps and while swapping
policies (restarts on the old or the new policy, never none), SIGTERM during start-up.

Fast versions for the test command; ``bench/daemon_failures.py`` runs the long ones.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from agent.ctl import request
from agent.wire import decode
from tests.agent.fakes import make_bundle

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cell:
    """A daemon process on the fake driver with fixed loopback ports, restartable."""

    def __init__(
        self, tmp: Path, bundle: Path, grasp_time_s: float = 0.005, warmup_runs: int = 1
    ) -> None:
        self.tmp = tmp
        self.cmd_ep = f"tcp://127.0.0.1:{free_port()}"
        self.evt_ep = f"tcp://127.0.0.1:{free_port()}"
        self.db = tmp / "data" / "grasps.db"
        self.config = tmp / "agent.toml"
        self.config.write_text(f"""
[agent]
data_dir = "{tmp / "data"}"
idle_sleep_s = 0.01
[driver]
type = "import"
factory = "tests.agent.fakes:make_fake_driver"
options = {{ grasp_time_s = {grasp_time_s} }}
[policy]
bundle = "{bundle}"
warmup_runs = {warmup_runs}
[probation]
max_grasps = 40
alpha = 0.001
[sockets]
command_endpoint = "{self.cmd_ep}"
event_endpoint = "{self.evt_ep}"
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self.proc

    def status(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, "daemon exited"
            try:
                rep = request(self.cmd_ep, "status", timeout_s=1.0)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                continue
            return dict(rep["result"])

    def serving(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until it actuates a loaded policy and has grasped; returns that status."""
        deadline = time.monotonic() + timeout
        st = self.status()
        while not (st["actuating"] and st["policy"] and st["last_grasp"]):
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
            st = self.status()
        return st

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def subscriber(self) -> zmq.Socket[bytes]:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"agent.")
        sub.connect(self.evt_ep)
        return sub


def drain(sub: zmq.Socket[bytes], into: list[tuple[str, dict[str, Any]]], ms: int = 0) -> None:
    while sub.poll(ms):
        frames = sub.recv_multipart()
        into.append((frames[0].decode(), decode(frames[1:]).header["data"]))
        ms = 0


def check_db(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return conn


def test_kill9_during_grasp_logging_keeps_every_acknowledged_grasp(tmp_path: Path) -> None:
    cell = Cell(tmp_path, make_bundle(tmp_path / "b"))
    sub = cell.subscriber()
    rng = random.Random(0)
    seen: list[tuple[str, dict[str, Any]]] = []
    try:
        for _ in range(10):
            cell.start()
            n0 = sum(t == "agent.grasp" for t, _ in seen)
            deadline = time.monotonic() + 60
            while sum(t == "agent.grasp" for t, _ in seen) < n0 + 3:
                assert time.monotonic() < deadline, "no grasps after restart"
                drain(sub, seen, 50)
            time.sleep(rng.uniform(0.0, 0.1))
            drain(sub, seen)
            cell.kill()
            drain(sub, seen, 100)  # whatever was published before the kill
            conn = check_db(cell.db)
            ids = {r[0] for r in conn.execute("SELECT id FROM grasps")}
            acked = {d["id"] for t, d in seen if t == "agent.grasp"}
            assert acked <= ids, sorted(acked - ids)
            n_tr = conn.execute("SELECT count(DISTINCT grasp_id) FROM transitions").fetchone()[0]
            assert n_tr == len(ids)  # a grasp and its transitions commit together
            conn.close()
    finally:
        if cell.proc is not None and cell.proc.poll() is None:
            cell.proc.kill()
        sub.close(0)


def test_kill9_during_swaps_restarts_on_old_or_new_policy(tmp_path: Path) -> None:
    first = make_bundle(tmp_path / "b", seed=0)
    others = [make_bundle(tmp_path / "c", seed=s) for s in (1, 2, 3)]
    cell = Cell(tmp_path, first)
    rng = random.Random(1)
    try:
        cell.start()
        bundles = (first, *others)
        for i in range(6):
            old = cell.serving()["policy"]
            pols = request(cell.cmd_ep, "policies", timeout_s=5)["result"]["policies"]
            bad = {p["id"] for p in pols if p["status"] == "rejected"}
            new = next(p for p in (*bundles[i % 4 :], *bundles) if p.name not in (old, *bad))
            rep = request(cell.cmd_ep, "promote", {"id": str(new)}, timeout_s=5)
            assert rep["ok"], rep
            time.sleep(rng.uniform(0.0, 0.4))
            cell.kill()
            conn = check_db(cell.db)
            active = [r[0] for r in conn.execute("SELECT id FROM policies WHERE status='active'")]
            conn.close()
            cell.start()
            st = cell.status()
            assert st["policy"] in (old, new.name), (st["policy"], old, new.name)
            assert active == [st["policy"]]  # the persisted pointer and the policy rows agree
            assert cell.serving()["policy"] in (old, new.name)  # serving again, never on none
    finally:
        if cell.proc is not None and cell.proc.poll() is None:
            cell.proc.kill()


def _notify_socket(tmp: Path) -> tuple[socket.socket, dict[str, str]]:
    path = tmp / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.1)
    return s, {"NOTIFY_SOCKET": str(path)}


def _datagrams(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except TimeoutError:
            return out


def test_sigterm_during_startup_exits_0_without_ready(tmp_path: Path) -> None:
    cell = Cell(tmp_path, make_bundle(tmp_path / "b"), warmup_runs=30000)  # a slow load
    s, env = _notify_socket(tmp_path)
    proc = cell.start(env)
    got: list[str] = []
    deadline = time.monotonic() + 30
    while not any("WATCHDOG=1" in m for m in got):  # the loop runs; the policy still loads
        assert time.monotonic() < deadline and proc.poll() is None
        got += _datagrams(s)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    err = proc.stderr.read().decode() if proc.stderr else ""
    got += _datagrams(s)
    s.close()
    assert not any("READY=1" in m.split("\n") for m in got), got
    assert "shutting down" in err


def test_second_sigterm_exits_at_once_with_code_4(tmp_path: Path) -> None:
    cell = Cell(tmp_path, make_bundle(tmp_path / "b"), warmup_runs=30000)
    proc = cell.start()
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 4
