"""A policy that hangs only after the world changes, in a real agent process under a
systemd stand-in that aborts it when the watchdog pings stop and restarts it when it dies.

The probe's crash loop: the decision outlasted WatchdogSec, systemd aborted the agent, and
every restart served the same policy again. Now the decision guard cuts it off (no abort at
all), and a process that dies inside a long decision anyway knows at the next start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.ctl import request
from testkit.cell import write_agent_toml
from testkit.fakes import hang_on_white_bundle, make_bundle
from testkit.net import free_port

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_S = 3.0


class Supervised:
    """An agent process run the way systemd runs it: NOTIFY_SOCKET, WATCHDOG_USEC, SIGABRT
    when no WATCHDOG=1 arrives within WATCHDOG_S, restart whenever the process ends."""

    def __init__(self, tmp: Path, bundle: Path, deadline_s: float) -> None:
        self.tmp = tmp
        self.world = tmp / "world-is-white"
        self.cmd_ep = f"tcp://127.0.0.1:{free_port()}"
        self.db = tmp / "data" / "grasps.db"
        self.marker = tmp / "data" / "deciding.json"
        self.config = tmp / "agent.toml"
        self.config = write_agent_toml(
            self.config,
            tmp / "data",
            bundle,
            self.cmd_ep,
            f"tcp://127.0.0.1:{free_port()}",
            factory="testkit.fakes:make_world_driver",
            options={"world": str(self.world), "grasp_time_s": 0.005},
            policy={
                "budget_hard_cap_s": 0.5,
                "decision_deadline_s": deadline_s,
                "decision_grace_s": 1.0,
            },
            probation={"max_grasps": 100000, "alpha": 0.000001},
        )
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(tmp / "notify.sock"))
        self.sock.settimeout(0.05)
        self.proc: subprocess.Popen[bytes] | None = None
        self.aborts = 0
        self.deaths: list[int] = []
        self.last_ping = 0.0

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "NOTIFY_SOCKET": str(self.tmp / "notify.sock"),
            "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
        }
        env.pop("WATCHDOG_PID", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "agent.log", "ab"),  # noqa: SIM115
        )
        self.last_ping = time.monotonic() + 20.0  # start-up: systemd's TimeoutStartSec

    def pump(self) -> None:
        """One round of the stand-in: read notifications, abort on a missed ping, restart."""
        assert self.proc is not None
        try:
            msg = self.sock.recv(4096).decode()
            if "WATCHDOG=1" in msg.split("\n") or "READY=1" in msg.split("\n"):
                self.last_ping = time.monotonic()
        except TimeoutError:
            pass
        if self.proc.poll() is not None:
            self.deaths.append(self.proc.returncode)
            self.start()
        elif time.monotonic() - self.last_ping > WATCHDOG_S:
            self.aborts += 1
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(10)
            self.start()

    def wait(self, pred: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, (self.aborts, self.deaths, self._log_tail())
            for _ in range(4):
                self.pump()

    def status(self) -> dict[str, Any] | None:
        try:
            rep = request(self.cmd_ep, "status", timeout_s=0.3)
        except Exception:
            return None
        return dict(rep["result"]) if rep.get("ok") else None

    def serving(self, policy: str, grasps: int = 0) -> Callable[[], bool]:
        def pred() -> bool:
            st = self.status()
            return bool(
                st and st["policy"] == policy and st["actuating"] and st["grasps"] >= grasps
            )

        return pred

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.sock.close()

    def _log_tail(self) -> str:
        return (self.tmp / "agent.log").read_text(errors="replace")[-3000:]

    def db_rows(self, sql: str, *args: Any) -> list[Any]:
        with sqlite3.connect(self.db, timeout=5) as db:
            return db.execute(sql, args).fetchall()


def _promote_hanging_child(s: Supervised, tmp: Path) -> tuple[str, str]:
    st = s.status()
    assert st is not None
    base = str(st["policy"])
    rep = request(s.cmd_ep, "promote", {"id": str(hang_on_white_bundle(tmp / "child"))})
    assert rep["ok"], rep
    child = ""

    def child_serves() -> bool:
        nonlocal child
        cur = s.status()
        if cur and cur["policy"] != base and (cur.get("last_grasp") or {}).get("policy"):
            child = str(cur["policy"])
            return bool(cur["last_grasp"]["policy"] == child)
        return False

    s.wait(child_serves, 30)
    return base, child


def _fault_recorded(s: Supervised, child: str) -> None:
    (status,) = s.db_rows("SELECT status FROM policies WHERE id = ?", child)[0]
    assert status == "rejected"
    alarms = [
        row[0]
        for row in s.db_rows("SELECT data FROM events WHERE topic = 'agent.alarm'")
        if "policy_fault" in row[0] and child in row[0]
    ]
    assert len(alarms) == 1 and "hung" in alarms[0], alarms


@contextlib.contextmanager
def _hanging_after_a_change(tmp: Path, deadline_s: float) -> Iterator[tuple[Supervised, str, str]]:
    """The agent supervised with ``deadline_s``; once it has grasped 5 times, a child that
    hangs on a white image is promoted and the world changes (the child now hangs on every
    image): the supervised agent, the parent and the child. Stops the agent at the end."""
    s = Supervised(tmp, make_bundle(tmp / "base"), deadline_s=deadline_s)
    s.start()
    try:
        s.wait(lambda: bool((st := s.status()) and st["grasps"] >= 5), 60)
        base, child = _promote_hanging_child(s, tmp)
        s.world.touch()
        yield s, base, child
    finally:
        s.stop()


def test_policy_hanging_after_a_world_change_is_cut_off_without_a_watchdog_abort(
    tmp_path: Path,
) -> None:
    with _hanging_after_a_change(tmp_path, deadline_s=1.0) as (s, base, child):
        n = len(s.db_rows("SELECT id FROM grasps"))
        s.wait(s.serving(base, grasps=n + 20), 40)
        assert s.aborts <= 1 and s.deaths == []  # cut off by the guard: no abort at all
        assert s.aborts == 0
        _fault_recorded(s, child)
        assert not s.marker.exists()


def test_agent_killed_inside_a_long_decision_never_serves_that_policy_again(
    tmp_path: Path,
) -> None:
    """The deadline is long (60 s) and the process is killed in the decision before it."""
    with _hanging_after_a_change(tmp_path, deadline_s=60.0) as (s, base, child):
        s.wait(s.marker.exists, 40)  # the guard names the policy once it is half-way late
        assert s.proc is not None
        s.proc.send_signal(signal.SIGKILL)  # the death the guard could not prevent
        killed_at = time.time()
        s.wait(s.serving(base), 60)  # restarted by the stand-in, back on the last good policy
        assert len(s.deaths) == 1 and s.aborts == 0
        _fault_recorded(s, child)
        later = s.db_rows(
            "SELECT count(*) FROM grasps WHERE policy_id = ? AND t_start > ?", child, killed_at
        )
        assert later == [(0,)]
