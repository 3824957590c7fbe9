"""The daemon grasping on the sim through the bridge while the bridge process dies and returns."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pybullet")

from agent.ctl import request
from agent.daemon import Daemon
from agent.driver_types import make_driver
from drivers.bridge.client import BridgeDriver
from testkit.bridges import SimBridgeProcess, free_port
from testkit.daemon import Subscriber, agent_config
from testkit.fakes import make_bundle

pytestmark = pytest.mark.timeout(120)


def test_daemon_survives_bridge_killed_and_restarted_without_double_or_half_grasps(
    tmp_path: Path,
) -> None:
    bridge = SimBridgeProcess(free_port(), "--objects", "3").start()
    total = 60
    bridge_cfg = {
        "endpoint": bridge.endpoint,
        "timeout_s": 0.5,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.4,
    }
    cfg = agent_config(
        tmp_path,
        make_bundle(tmp_path / "b"),
        agent={"max_grasps": total},
        driver={"type": "bridge", "bridge": bridge_cfg},
    )
    driver = make_driver(cfg.driver)
    assert isinstance(driver, BridgeDriver)
    daemon = Daemon(cfg, driver)
    result: list[int] = []
    th = threading.Thread(target=lambda: result.append(daemon.run()), daemon=True)
    try:
        th.start()
        assert daemon.ready.wait(60)
        events = Subscriber(daemon.endpoints["events"])
        deadline = time.monotonic() + 30
        while daemon.grasps < 20:
            assert time.monotonic() < deadline, "no grasps through the bridge"
            time.sleep(0.005)
        bridge.kill()  # SIGKILL, most likely in the middle of a grasp
        down = events.wait("agent.driver", timeout=10)
        assert down["state"] == "down" and bridge.endpoint in down["message"]
        frozen = daemon.grasps
        st = request(daemon.endpoints["commands"], "status", timeout_s=5)
        assert st["ok"]  # commands are still answered during the outage
        time.sleep(1.0)
        assert daemon.grasps == frozen, "grasps logged while the bridge was dead"
        assert 20 <= frozen < total
        bridge.start()  # same port, a fresh process: new session, new world
        events.seen.clear()
        up = events.wait("agent.driver", timeout=20)
        assert up["state"] == "up"
        th.join(60)
        assert result == [0]
        assert bridge.stop() == 0
        # every grasp the second bridge ran was logged once, and nothing else after the restart
        assert bridge.executed() == total - frozen
    finally:
        daemon.request_stop()
        th.join(30)
        bridge.kill()
    db = sqlite3.connect(cfg.data_path(cfg.grasp_log.path))
    n, ok = db.execute("SELECT count(*), sum(sensed_by = 'sim_height') FROM grasps").fetchone()
    assert n == ok == total
    # horizon 1: exactly one transition per grasp, each with its image and done
    per = db.execute(
        "SELECT g.id, count(t.id), sum(t.done), sum(t.image IS NOT NULL) FROM grasps g "
        "LEFT JOIN transitions t ON t.grasp_id = g.id GROUP BY g.id"
    ).fetchall()
    assert len(per) == total and all(row[1:] == (1, 1, 1) for row in per)
    assert db.execute("SELECT count(*) FROM transitions").fetchone() == (total,)
    states = [
        r[0]
        for r in db.execute(
            "SELECT json_extract(data, '$.state') FROM events WHERE topic = 'agent.driver' "
            "ORDER BY id"
        )
    ]
    assert states == ["down", "up"]
    errors = db.execute("SELECT count(*) FROM events WHERE topic = 'agent.error'").fetchone()
    assert errors == (0,)  # an outage is not a grasp error
    events.close()
