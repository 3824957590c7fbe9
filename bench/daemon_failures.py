"""The daemon under failures: kill -9 during grasp logging, a command flood, a full disk.

Usage: python -m bench.daemon_failures [--kills 30] [--log-grasps 1000000] [--requests 1000]
                                       [--full-s 3]

1. ``kills``: a real ``robot-agent run`` process on the fake driver, SIGKILLed at a random
   moment after it logs grasps, restarted, ``--kills`` times. After each kill:
   ``PRAGMA integrity_check`` and "every grasp seen on the PUB socket is in the log".
2. ``flood``: a log of ``--log-grasps`` grasps (bulk insert), the daemon in this process
   with a real NOTIFY_SOCKET datagram socket (WATCHDOG_USEC 500 ms) and a fake robot whose
   grasps take 50 ms; ``--requests`` ``stats`` from another process, as fast as answered.
   Measured: longest gap between watchdog pings during the flood, grasp rate without and
   with the flood, stats latency. Rate limits are off so every request reaches the code.
3. ``disk_full``: SQLITE_FULL injected (page cap) for ``--full-s`` seconds while serving:
   grasps held, alarm, flush when space returns, acknowledged grasps all in the log.

Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.daemon import Daemon
from agent.grasplog import GraspLog
from plumbing.sd_notify import Notifier
from testkit.biglog import bulk_insert_grasps
from testkit.cell import Cell, drain
from testkit.daemon import Subscriber, agent_config
from testkit.fakes import FakeDriver, make_bundle

ROOT = Path(__file__).resolve().parents[1]


def kills(tmp: Path, n: int) -> dict[str, Any]:
    cell = Cell(tmp, make_bundle(tmp / "b"))
    sub = cell.subscriber()
    rng = random.Random(0)
    seen: list[tuple[str, dict[str, Any]]] = []
    ok = intact = 0
    try:
        for _ in range(n):
            cell.start()
            n0 = sum(t == "agent.grasp" for t, _ in seen)
            while sum(t == "agent.grasp" for t, _ in seen) < n0 + 3:
                drain(sub, seen, 50)
            time.sleep(rng.uniform(0.0, 0.3))
            drain(sub, seen)
            cell.kill()
            drain(sub, seen, 100)
            conn = sqlite3.connect(cell.db)
            intact += conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            ids = {r[0] for r in conn.execute("SELECT id FROM grasps")}
            conn.close()
            acked = {d["id"] for t, d in seen if t == "agent.grasp"}
            ok += acked <= ids
    finally:
        if cell.proc is not None and cell.proc.poll() is None:
            cell.proc.kill()
        sub.close(0)
    acked = {d["id"] for t, d in seen if t == "agent.grasp"}
    return {"kills": n, "integrity_ok": intact, "acked_all_present": ok, "acked_grasps": len(acked)}


def flood(tmp: Path, log_grasps: int, requests: int) -> dict[str, Any]:
    cfg = agent_config(
        tmp,
        make_bundle(tmp / "b"),
        sockets={"command_rate_per_s": 0.0, "command_total_rate_per_s": 0.0},
    )
    t0 = time.monotonic()
    with GraspLog(cfg.data_path(cfg.grasp_log.path)) as glog:
        cid = glog.add_condition("base", "", "initial")
        glog.upsert_policy("bulk", "/nowhere", "retired")
        bulk_insert_grasps(glog, log_grasps, cid, "bulk")
    build_s = time.monotonic() - t0
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(str(tmp / "notify.sock"))
    nsock.settimeout(0.05)
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp / "notify.sock"), "WATCHDOG_USEC": "500000"})
    driver = FakeDriver(grasp_time_s=0.05)
    daemon = Daemon(cfg, driver, notifier)
    pings: list[float] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                if "WATCHDOG=1" in nsock.recv(4096).decode().split("\n"):
                    pings.append(time.monotonic())
            except TimeoutError:
                pass

    threading.Thread(target=listen, daemon=True).start()
    th = threading.Thread(target=daemon.run, daemon=True)
    th.start()
    try:
        assert daemon.ready.wait(60)
        ep = daemon.endpoints["commands"]
        time.sleep(1.0)
        n0, t_a = len(driver.actions), time.monotonic()
        time.sleep(5.0)
        base = (len(driver.actions) - n0) / (time.monotonic() - t_a)
        code = (
            "import sys, time, json; from agent.ctl import request\n"
            "ep, n = sys.argv[1], int(sys.argv[2]); lat = []; ok = 0\n"
            "print('started', flush=True)\n"
            "for _ in range(n):\n"
            "    t = time.perf_counter(); ok += bool(request(ep, 'stats', timeout_s=30)['ok'])\n"
            "    lat.append(time.perf_counter() - t)\n"
            "print(json.dumps({'ok': ok, 'lat': lat}))\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, ep, str(requests)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        n1, t_f = len(driver.actions), time.monotonic()
        out, _ = proc.communicate(timeout=600)
        t_end = time.monotonic()
        loaded = (len(driver.actions) - n1) / (t_end - t_f)
        res = json.loads(out.strip().splitlines()[-1])
        lat = sorted(res["lat"])
        gaps = [b - a for a, b in itertools.pairwise(pings) if t_f <= b <= t_end]
        quiet = [b - a for a, b in itertools.pairwise(pings) if b < t_f]
    finally:
        stop.set()
        daemon.request_stop()
        th.join(60)
        nsock.close()
    return {
        "log_grasps": log_grasps,
        "build_log_s": round(build_s, 1),
        "requests": requests,
        "answered_ok": res["ok"],
        "flood_s": round(t_end - t_f, 2),
        "stats_first_ms": round(res["lat"][0] * 1e3, 1),
        "stats_p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
        "stats_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1e3, 2),
        "watchdog_usec": 500000,
        "max_ping_gap_s_flood": round(max(gaps), 3) if gaps else None,
        "max_ping_gap_s_quiet": round(max(quiet), 3) if quiet else None,
        "grasp_rate_base": round(base, 2),
        "grasp_rate_flood": round(loaded, 2),
        "rate_ratio": round(loaded / base, 3),
    }


def disk_full(tmp: Path, full_s: float) -> dict[str, Any]:

    cfg = agent_config(tmp, make_bundle(tmp / "b"))
    driver = FakeDriver(grasp_time_s=0.01)
    daemon = Daemon(cfg, driver)
    th = threading.Thread(target=daemon.run, daemon=True)
    th.start()
    assert daemon.ready.wait(60)
    sub = Subscriber(daemon.endpoints["events"])
    time.sleep(0.5)
    n_before = len(driver.actions)
    daemon.log.cap_pages(0)
    time.sleep(full_s)
    held = daemon.snapshot()["storage"]["held"]
    served_while_full = len(driver.actions) - n_before
    daemon.log.cap_pages(None)
    rec = sub.wait("agent.storage", timeout=30)
    time.sleep(0.5)
    daemon.request_stop()
    th.join(60)
    time.sleep(0.2)
    with contextlib.suppress(AssertionError):
        sub.wait("agent.__drain__", timeout=0.5)
    alarms = [d for t, d in sub.seen if t == "agent.alarm" and d["kind"] == "storage_full"]
    acked = {d["id"] for t, d in sub.seen if t == "agent.grasp"}
    conn = sqlite3.connect(cfg.data_path(cfg.grasp_log.path))
    ids = {r[0] for r in conn.execute("SELECT id FROM grasps")}
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    sub.close()
    return {
        "full_s": full_s,
        "grasps_while_full": served_while_full,
        "held_at_peak": held,
        "flushed": rec["flushed"],
        "alarms": len(alarms),
        "acked_lost": len(acked - ids),
        "executed": len(driver.actions),
        "logged": len(ids),
        "integrity": integrity,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--log-grasps", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--full-s", type=float, default=3.0)
    args = ap.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        out["disk_full"] = disk_full(Path(d) / "full", args.full_s)
        print("disk_full", out["disk_full"], flush=True)
    with tempfile.TemporaryDirectory() as d:
        out["flood"] = flood(Path(d), args.log_grasps, args.requests)
        print("flood", out["flood"], flush=True)
    with tempfile.TemporaryDirectory() as d:
        out["kills"] = kills(Path(d), args.kills)
        print("kills", out["kills"], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
