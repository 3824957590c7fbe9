"""The daemon as a real process (``python -m agent.cli run``) on a fake driver: its config
file, a restartable process with fixed loopback ports, and its event stream."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from agent.ctl import request
from agent.wire import decode
from testkit.net import free_port

ROOT = Path(__file__).resolve().parents[1]


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return repr(v)


def write_agent_toml(
    path: Path,
    data_dir: Path,
    bundle: Path,
    command_endpoint: str,
    event_endpoint: str,
    factory: str = "testkit.fakes:make_fake_driver",
    options: dict[str, Any] | None = None,
    **tables: dict[str, Any],
) -> Path:
    """An agent.toml for a daemon process on an ``import`` driver (``factory`` with
    ``options``), one warm-up run and a 10 ms idle sleep; ``tables`` add to or override
    [agent], [policy] and add other tables (``probation={...}``)."""
    raw: dict[str, dict[str, Any]] = {
        "agent": {"data_dir": str(data_dir), "idle_sleep_s": 0.01},
        "driver": {"type": "import", "factory": factory, "options": options or {}},
        "policy": {"bundle": str(bundle), "warmup_runs": 1},
        "sockets": {"command_endpoint": command_endpoint, "event_endpoint": event_endpoint},
    }
    for name, values in tables.items():
        raw.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in raw.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def tables_with(tables: dict[str, dict[str, Any]], warmup_runs: int) -> dict[str, dict[str, Any]]:
    """The Cell's own [policy] and [probation] settings, then ``tables`` over them."""
    own: dict[str, dict[str, Any]] = {
        "policy": {"warmup_runs": warmup_runs},
        "probation": {"max_grasps": 40, "alpha": 0.001},
    }
    return {**own, **tables}


class Cell:
    """A daemon process on the fake driver with fixed loopback ports, restartable."""

    def __init__(
        self,
        tmp: Path,
        bundle: Path,
        grasp_time_s: float = 0.005,
        warmup_runs: int = 1,
        options: dict[str, Any] | None = None,
        **tables: dict[str, Any],
    ) -> None:
        self.tmp = tmp
        self.cmd_ep = f"tcp://127.0.0.1:{free_port()}"
        self.evt_ep = f"tcp://127.0.0.1:{free_port()}"
        self.db = tmp / "data" / "grasps.db"
        self.config = write_agent_toml(
            tmp / "agent.toml",
            tmp / "data",
            bundle,
            self.cmd_ep,
            self.evt_ep,
            "testkit.fakes:make_fake_driver",
            {"grasp_time_s": grasp_time_s, **(options or {})},
            **tables_with(tables, warmup_runs),
        )
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
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"agent.")
        sub.connect(self.evt_ep)
        return sub


def drain(sub: zmq.Socket[bytes], into: list[tuple[str, dict[str, Any]]], ms: int = 0) -> None:
    """Append every (topic, data) event waiting on ``sub`` to ``into``, waiting up to ``ms``
    for the first."""
    while sub.poll(ms):
        frames = sub.recv_multipart()
        into.append((frames[0].decode(), decode(frames[1:]).header["data"]))
        ms = 0


def check_db(db: Path) -> sqlite3.Connection:
    """Open the grasp log, asserting SQLite's integrity check passes."""
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return conn
