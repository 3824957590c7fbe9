"""The daemon as a process: sd_notify on a real unix datagram socket, SIGTERM, refusal to expose."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.cell import write_agent_toml
from testkit.fakes import make_bundle

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, bundle: Path, endpoint: str = "tcp://127.0.0.1:*") -> Path:
    return write_agent_toml(
        tmp_path / "agent.toml",
        tmp_path / "data",
        bundle,
        endpoint,
        "tcp://127.0.0.1:*",
        options={"grasp_time_s": 0.02},
    )


def _recv_until(sock: socket.socket, key: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            break
        got.append(msg)
        if key in msg.split("\n"):
            return got
    raise AssertionError(f"no {key!r}; got {got}")


def test_sd_notify_ready_watchdog_and_sigterm_exit_0(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "200000",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "--config",
            str(_config(tmp_path, make_bundle(tmp_path / "b"))),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        got = _recv_until(sock, "READY=1", 60)
        ready = next(m for m in got if "READY=1" in m.split("\n"))
        assert "STATUS=serving condition=base" in ready and f"MAINPID={proc.pid}" in ready
        _recv_until(sock, "WATCHDOG=1", 5)
        _recv_until(sock, "WATCHDOG=1", 5)  # keeps coming from the control loop
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stdout.read().decode() if proc.stdout else ""
        _recv_until(sock, "STOPPING=1", 2)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    db = sqlite3.connect(tmp_path / "data" / "grasps.db")
    n = db.execute("SELECT count(*) FROM grasps").fetchone()[0]
    assert n > 0
    # the grasp in flight at SIGTERM was finished and committed with its transition
    assert db.execute("SELECT count(*) FROM transitions").fetchone()[0] == n


def test_refuses_non_loopback_bind_without_curve(tmp_path: Path) -> None:
    cfg = _config(tmp_path, make_bundle(tmp_path / "b"), endpoint="tcp://0.0.0.0:5999")
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "not a loopback address" in out.stderr and "CURVE" in out.stderr
    assert not (tmp_path / "data" / "grasps.db").exists()
