"""The daemon as a real process, killed: SIGKILL while logging grasps and while swapping
policies (restarts on the old or the new policy, never none), SIGTERM during start-up.

Fast versions for the test command; ``bench/daemon_failures.py`` runs the long ones.
"""

from __future__ import annotations

import random
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from agent.ctl import request
from testkit.cell import Cell, check_db, drain
from testkit.fakes import make_bundle

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]


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
