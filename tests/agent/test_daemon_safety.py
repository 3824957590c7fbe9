"""The daemon's safety promises: responsive commands, run-time faults, probation, storage.

Real loopback sockets and SQLite files; the only fakes are the robot (FakeDriver)
and the policies' misbehaviour (tiny ONNX graphs built to misbehave).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.ctl import request
from agent.daemon import Daemon
from agent.driver import Observation
from testkit.biglog import bulk_insert_grasps
from testkit.daemon import Running, agent_config, wait_match
from testkit.fakes import FakeDriver, make_bundle, tiny_model

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]
Start = Callable[..., Running]


def _db(r: Running) -> sqlite3.Connection:
    return sqlite3.connect(r.cfg.data_path(r.cfg.grasp_log.path))


def white_image_faulty_bundle(root: Path, seed: int = 3) -> Path:
    """A bundle that is fine on ordinary images but returns Q > 1 on a white image."""
    import onnx
    from onnx import helper, numpy_helper

    from agent.bundle import write_bundle

    m = onnx.load_from_string(tiny_model(target=(0.1 * seed, 0.0, 0.0)))
    g = m.graph
    for n in g.node:
        if n.op_type == "Sigmoid":
            n.output[0] = "q_ok"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.asarray(250.0, np.float32), "c250"),
            numpy_helper.from_array(np.asarray(1.0, np.float32), "c1"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Sub", ["img_mean", "c250"], ["over"]),
            helper.make_node("Relu", ["over"], ["over_pos"]),
            helper.make_node("Add", ["over_pos", "c1"], ["factor"]),
            helper.make_node("Mul", ["q_ok", "factor"], ["q"]),
        ]
    )
    onnx.checker.check_model(m)
    return write_bundle(root, m.SerializeToString(), b"faulty", {"parent_id": None})


def white_images(driver: FakeDriver) -> None:
    """The camera now sees a white bin (the faulty bundle's trigger)."""

    def observe() -> Observation:
        return Observation(np.full(driver.spec.image_shape, 255, np.uint8), 0, time.time())

    driver.observe = observe  # type: ignore[method-assign]


def test_status_answers_within_100ms_while_a_5s_grasp_runs(start_daemon: Start) -> None:
    r = start_daemon(grasp_time_s=5.0)
    assert r.driver.in_grasp.wait(30)
    t0 = time.monotonic()
    st = r.ctl("status", timeout_s=1.0)
    took = time.monotonic() - t0
    assert st["ok"] and took < 0.1, took
    assert r.driver.in_grasp.is_set()  # the grasp is still in flight
    t0 = time.monotonic()
    rep = r.ctl("pause", timeout_s=1.0, reason="test")  # a change is acknowledged at once too
    assert rep["ok"] and rep["result"]["queued"] and time.monotonic() - t0 < 0.1
    assert r.ctl("status")["result"]["pending_commands"] == 1  # applied after the grasp
    stats = r.ctl("stats", timeout_s=1.0)
    assert stats["ok"] and r.driver.in_grasp.is_set()


def test_policy_fault_at_run_time_restores_last_good_and_never_restarts_into_it(
    start_daemon: Start, tmp_path: Path
) -> None:
    r = start_daemon(probation={"alpha": 0.001})  # no chance rollback by probation here
    sub = r.subscriber()
    good = r.wait_for(lambda s: s["grasps"] >= 3)["policy"]
    bad_dir = white_image_faulty_bundle(tmp_path / "faulty")
    assert r.ctl("promote", id=str(bad_dir))["ok"]  # passes validation on ordinary images
    swapped = wait_match(sub, "agent.policy.swapped", lambda d: d["previous"] == good)
    bad = swapped["policy"]
    assert r.wait_for(lambda s: s["policy"] == bad)["fallback"] == good
    n_before = r.ctl("status")["result"]["grasps"]
    white_images(r.driver)
    alarm = wait_match(sub, "agent.alarm", lambda d: d["kind"] == "policy_fault")
    assert bad in alarm["reason"] and good in alarm["reason"]
    back = wait_match(sub, "agent.policy.rolled_back", lambda d: d["policy"] == good)
    assert back["previous"] == bad and back["reason"] == "policy_fault"
    st = r.wait_for(lambda s: s["grasps"] >= n_before + 5)
    assert st["policy"] == good and st["actuating"]  # serving on, no load needed, no exit
    assert r.thread.is_alive()
    rows = dict(_db(r).execute("SELECT id, status FROM policies").fetchall())
    assert rows[bad] == "rejected"
    assert r.ctl("promote", id=bad)["error"]["code"] == "conflict"
    assert r.ctl("promote", id=str(bad_dir))["ok"]  # the directory again: refused on arrival
    assert wait_match(sub, "agent.policy.rejected", lambda d: d.get("purpose") == "promote")
    # the fault is published once (the fake's chance successes may add a success_drop: not counted)
    faults = [d for t, d in sub.seen if t == "agent.alarm" and d["kind"] == "policy_fault"]
    assert len(faults) == 1
    # a restart (same data dir) serves the last good policy, never the rejected one
    r.daemon.request_stop()
    r.thread.join(30)
    assert r.result == [0]
    d2 = Daemon(r.cfg, FakeDriver())
    th = threading.Thread(target=d2.run, daemon=True)
    th.start()
    try:
        assert d2.ready.wait(30)
        st = request(d2.endpoints["commands"], "status")["result"]
        assert st["policy"] == good and bad not in st["good"]
    finally:
        d2.request_stop()
        th.join(30)


def test_validation_probes_recorded_images_of_the_current_condition(
    start_daemon: Start, tmp_path: Path
) -> None:
    r = start_daemon()
    sub = r.subscriber()
    white_images(r.driver)  # the condition now looks white: recorded in the log
    n = r.wait_for(lambda s: s["grasps"] >= 1)["grasps"]
    good = r.wait_for(lambda s: s["grasps"] >= n + 10)["policy"]
    assert r.ctl("promote", id=str(white_image_faulty_bundle(tmp_path / "faulty")))["ok"]
    rejected = wait_match(sub, "agent.policy.rejected", lambda d: d.get("purpose") == "promote")
    assert rejected["reason"] and rejected["policy"]  # refused before it ever served
    st = r.wait_for(lambda s: s["grasps"] >= n + 15)
    assert st["policy"] == good
    db = _db(r)
    assert db.execute(
        "SELECT count(*) FROM grasps WHERE policy_id = ?", (rejected["policy"],)
    ).fetchone() == (0,)


def test_probation_rolls_a_worse_child_back_within_bounded_grasps(
    start_daemon: Start, tmp_path: Path
) -> None:
    r = start_daemon(p_success=0.9, grasp_time_s=0.01, probation={"max_grasps": 150})
    sub = r.subscriber()
    parent = r.wait_for(lambda s: s["grasps"] >= 100)["policy"]
    child_dir = make_bundle(tmp_path / "child", seed=7, parent_id=parent)
    assert r.ctl("promote", id=str(child_dir))["ok"]
    r.driver.set_success(0.3)  # from the swap on (a few parent grasps too): a worse child
    swapped = wait_match(sub, "agent.policy.swapped", lambda d: d["previous"] == parent)
    child = swapped["policy"]
    verdict = wait_match(sub, "agent.policy.probation", lambda d: d["policy"] == child)
    assert verdict["verdict"] == "fail" and verdict["parent_rate"] > 0.7
    assert verdict["grasps"] <= 150
    back = wait_match(sub, "agent.policy.rolled_back", lambda d: d["policy"] == parent)
    assert back["reason"] == "probation_failed"
    alarm = wait_match(sub, "agent.alarm", lambda d: d["kind"] == "probation_failed")
    assert alarm["verdict"] == "fail"
    st = r.wait_for(lambda s: s["policy"] == parent)
    assert st["last_good"] == parent and child not in st["good"]
    db = _db(r)
    assert db.execute("SELECT status FROM policies WHERE id = ?", (child,)).fetchone() == (
        "rejected",
    )
    n_child = db.execute("SELECT count(*) FROM grasps WHERE policy_id = ?", (child,)).fetchone()
    assert n_child[0] <= 150 + 2


def test_condition_names_and_empty_promote_are_refused(start_daemon: Start) -> None:
    r = start_daemon()
    r.wait_for(lambda s: s["grasps"] >= 1)
    rep = r.ctl("mark-condition", name="x/../../../../outside")
    assert rep["error"]["code"] == "bad_args"
    assert r.ctl("promote", id="")["error"]["code"] == "bad_args"
    assert r.ctl("promote", id="   ")["error"]["code"] in ("bad_args", "not_found")
    st = r.ctl("status")["result"]
    assert st["condition"] == "base" and st["pending_commands"] == 0
    assert not (Path(r.cfg.agent.data_dir).parent / "outside").exists()


def test_events_table_and_pub_socket_carry_the_same_set(start_daemon: Start) -> None:
    r = start_daemon(p_success=0.95, lifecycle={"on_alarm": "mark", "exploration_grasps": 20})
    sub = r.subscriber()
    r.ctl("pause", reason="x")
    r.ctl("resume")
    r.wait_for(lambda s: not s["detector"]["calibrating"])
    r.driver.set_success(0.05)
    alarm = sub.wait("agent.alarm", timeout=30)
    assert alarm["kind"] == "success_drop" and "reference" in alarm  # one payload, all fields
    wait_match(sub, "agent.job", lambda d: d["status"] == "queued", timeout=30)
    r.ctl("pause", reason="end")
    r.wait_for(lambda s: s["paused"])
    time.sleep(0.3)
    with pytest.raises(AssertionError):
        sub.wait("agent.__drain__", timeout=0.5)
    r.daemon.request_stop()
    r.thread.join(30)
    pub = [(t, _norm(d)) for t, d in sub.seen if t != "agent.grasp"]
    rows = _db(r).execute("SELECT topic, data FROM events ORDER BY id").fetchall()
    table = [(t, _norm(json.loads(d))) for t, d in rows]
    k = table.index(pub[0])
    assert table[k:] == pub  # same events, same order, same payloads
    assert [t for t, _ in pub].count("agent.alarm") == 1


def _norm(d: dict[str, Any]) -> Any:
    return json.loads(json.dumps(d, default=str))


def test_disk_full_keeps_serving_alarms_and_loses_no_acknowledged_grasp(
    start_daemon: Start,
) -> None:
    r = start_daemon(grasp_time_s=0.005)
    sub = r.subscriber()
    r.wait_for(lambda s: s["grasps"] >= 5)
    r.daemon.log.cap_pages(0)  # SQLITE_FULL from the next write on
    alarm = wait_match(sub, "agent.alarm", lambda d: d["kind"] == "storage_full")
    assert "grasp log cannot be written" in alarm["reason"]
    full = r.wait_for(lambda s: s["storage"]["held"] >= 20)
    assert full["actuating"] and full["storage"]["status"] == "full"  # serving continues
    r.daemon.log.cap_pages(None)  # space returns
    rec = sub.wait("agent.storage", timeout=20)
    assert rec["status"] == "recovered" and rec["flushed"] >= 20
    r.wait_for(lambda s: s["storage"]["held"] == 0 and s["storage"]["status"] == "ok")
    r.daemon.request_stop()
    r.thread.join(30)
    time.sleep(0.2)
    with pytest.raises(AssertionError):
        sub.wait("agent.__drain__", timeout=0.5)
    acked = {d["id"] for t, d in sub.seen if t == "agent.grasp"}
    db = _db(r)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ids = {row[0] for row in db.execute("SELECT id FROM grasps")}
    assert acked <= ids  # every grasp seen on the PUB socket is in the log
    assert len(ids) == len(r.driver.actions)  # and none executed was lost
    topics = [row[0] for row in db.execute("SELECT topic FROM events")]
    assert "agent.alarm" in topics and "agent.storage" in topics  # recorded once space returned
    sub.close()


def test_stats_flood_on_a_big_log_keeps_watchdog_and_grasp_rate(tmp_path: Path) -> None:
    import socket

    from agent.grasplog import GraspLog
    from plumbing.sd_notify import Notifier

    cfg = agent_config(
        tmp_path,
        make_bundle(tmp_path / "b"),
        sockets={"command_rate_per_s": 0.0, "command_total_rate_per_s": 0.0},
    )
    with GraspLog(cfg.data_path(cfg.grasp_log.path)) as glog:
        cid = glog.add_condition("base", "", "initial")
        glog.upsert_policy("bulk", "/nowhere", "retired")
        bulk_insert_grasps(glog, 200_000, cid, "bulk")
    sock_path = tmp_path / "notify.sock"
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(str(sock_path))
    # 2 s (the unit ships 10 s): pings every second, so a loop stalled for a second fails; a
    # CI disk's fsync spike of a few hundred ms (a clean CI run saw 0.6 s at 0.5 s) does not
    notifier = Notifier(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"})
    driver = FakeDriver(grasp_time_s=0.05)  # mostly waiting on the robot, like a real cell
    daemon = Daemon(cfg, driver, notifier)
    th = threading.Thread(target=daemon.run, daemon=True)
    pings: list[float] = []
    stop = threading.Event()

    def listen() -> None:
        nsock.settimeout(0.05)
        while not stop.is_set():
            try:
                msg = nsock.recv(4096).decode()
            except TimeoutError:
                continue
            if "WATCHDOG=1" in msg.split("\n"):
                pings.append(time.monotonic())

    lt = threading.Thread(target=listen, daemon=True)
    lt.start()
    th.start()
    try:
        assert daemon.ready.wait(30)
        ep = daemon.endpoints["commands"]

        def rate(seconds: float) -> float:
            n0 = len(driver.actions)
            time.sleep(seconds)
            return (len(driver.actions) - n0) / seconds

        base = rate(3.0)
        # the flood comes from another process, as a client would (no shared GIL)
        code = (
            "import sys; from agent.ctl import request\n"
            "ep = sys.argv[1]\n"
            "ok = bool(request(ep, 'stats', timeout_s=10)['ok'])\n"
            "print('started', flush=True)\n"
            "ok += sum(bool(request(ep, 'stats', timeout_s=10)['ok']) for _ in range(999))\n"
            "print(ok)\n"
        )
        flood = subprocess.Popen(
            [sys.executable, "-c", code, ep], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert flood.stdout is not None and flood.stdout.readline().strip() == "started"
        t_flood = time.monotonic()
        loaded = rate(3.0)
        out, _ = flood.communicate(timeout=60)
        t_end = time.monotonic()
        answered = [True] * int(out.strip() or 0)
        assert len(answered) == 1000
        during = [b - a for a, b in itertools.pairwise(pings) if t_flood <= b <= t_end]
        print(f"flood {t_end - t_flood:.1f} s, watchdog gaps {during}")
        assert len(during) >= 2 and max(during) < 2.0, during  # never later than WATCHDOG_USEC
        # ~55 grasps a window, and the flood's client takes one of the two cores: a few grasps
        # of noise (0.875 seen locally); a stats scan of the log would cost far more than 20%
        assert loaded >= 0.8 * base, (loaded, base)
        st = request(ep, "stats")["result"]
        assert sum(row["grasps"] for row in st["table"]) >= 200_000
    finally:
        stop.set()
        daemon.request_stop()
        th.join(30)
        nsock.close()


def test_stop_while_disk_full_exits_5_and_logs_every_unwritten_grasp(
    start_daemon: Start, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.daemon import EXIT_UNWRITTEN

    r = start_daemon(grasp_time_s=0.005, grasp_log={"stop_flush_s": 0.6})
    r.wait_for(lambda s: s["grasps"] >= 5)
    r.daemon.log.cap_pages(0)  # SQLITE_FULL from the next write on
    r.wait_for(lambda s: s["storage"]["held"] >= 10)
    with caplog.at_level("ERROR", logger="agent.daemon"):
        t0 = time.monotonic()
        r.daemon.request_stop()
        r.thread.join(30)
    assert r.result == [EXIT_UNWRITTEN] and time.monotonic() - t0 >= 0.5  # retried first
    in_db = _db(r).execute("SELECT count(*) FROM grasps").fetchone()[0]
    logged = [m for m in caplog.messages if m.startswith("unwritten grasp ")]
    assert r.daemon.unwritten == len(logged) >= 10
    assert in_db + len(logged) == len(r.driver.actions)  # every executed grasp is somewhere
    assert any("could not be written" in m and "exiting 5" in m for m in caplog.messages)


def test_stop_while_disk_full_writes_everything_if_space_returns_in_time(
    start_daemon: Start,
) -> None:
    r = start_daemon(grasp_time_s=0.005, grasp_log={"stop_flush_s": 10.0})
    r.wait_for(lambda s: s["grasps"] >= 5)
    r.daemon.log.cap_pages(0)
    r.wait_for(lambda s: s["storage"]["held"] >= 10)
    r.daemon.request_stop()
    time.sleep(1.0)
    assert r.thread.is_alive()  # still retrying within the stop window
    r.daemon.log.cap_pages(None)  # space returns
    r.thread.join(30)
    assert r.result == [0] and r.daemon.unwritten == 0
    assert _db(r).execute("SELECT count(*) FROM grasps").fetchone()[0] == len(r.driver.actions)


def test_status_reports_the_driver_down_and_not_actuating_while_unreachable(
    start_daemon: Start,
) -> None:
    from agent.driver import DriverUnavailable

    r = start_daemon(grasp_time_s=0.005)
    st = r.wait_for(lambda s: s["grasps"] >= 3)
    assert st["driver"] == {"state": "up", "message": ""} and st["actuating"]
    real = r.driver.observe

    def unreachable() -> Observation:
        raise DriverUnavailable("bridge heartbeat lost")

    r.driver.observe = unreachable  # type: ignore[method-assign]
    down = r.wait_for(lambda s: s["driver"]["state"] == "down")
    assert down["driver"]["message"] == "bridge heartbeat lost"
    assert not down["actuating"] and "driver unavailable" in down["no_policy_reason"]
    r.driver.observe = real  # type: ignore[method-assign]
    n = down["grasps"]
    up = r.wait_for(lambda s: s["driver"]["state"] == "up" and s["grasps"] > n)
    assert up["actuating"]
