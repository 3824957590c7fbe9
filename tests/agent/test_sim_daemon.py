"""The daemon driving the real pybullet sim cell (integration, small budget)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

pytest.importorskip("pybullet")

from agent.ctl import request
from agent.daemon import Daemon
from agent.driver_types import make_driver
from testkit.daemon import agent_config
from testkit.fakes import make_bundle

pytestmark = pytest.mark.timeout(120)


def test_daemon_on_sim_cell_logs_every_grasp(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, make_bundle(tmp_path / "b"), agent={"max_grasps": 6})
    driver = make_driver(cfg.driver)
    daemon = Daemon(cfg, driver)
    result: list[int] = []
    th = threading.Thread(target=lambda: result.append(daemon.run()), daemon=True)
    th.start()
    assert daemon.ready.wait(60)
    st = request(daemon.endpoints["commands"], "status", timeout_s=30)
    assert st["ok"] and st["result"]["policy"]
    th.join(100)
    assert result == [0]
    db = sqlite3.connect(cfg.data_path(cfg.grasp_log.path))
    assert db.execute("SELECT count(*), count(DISTINCT sensed_by) FROM grasps").fetchone() == (6, 1)
    assert db.execute("SELECT sensed_by FROM grasps LIMIT 1").fetchone() == ("sim_height",)
    assert db.execute("SELECT count(*) FROM transitions WHERE image IS NOT NULL").fetchone() == (6,)
