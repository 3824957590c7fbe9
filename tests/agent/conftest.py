"""Fixtures: a daemon on the fake driver in a thread, with real loopback sockets and SQLite."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import Daemon
from testkit.daemon import Restart, Running, agent_config, serve, start_in_thread
from testkit.fakes import FakeDriver, make_bundle


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(
        bundle: bool = True, p_success: float = 0.8, grasp_time_s: float = 0.002, **over: Any
    ) -> Running:
        b = make_bundle(tmp_path / "incoming") if bundle else None
        cfg = agent_config(tmp_path, b, **over)
        driver = FakeDriver(p_success=p_success, grasp_time_s=grasp_time_s)
        r = start_in_thread(cfg, driver, ready=bundle)
        running.append(r)
        return r

    yield start
    for r in running:
        r.daemon.request_stop()
        r.thread.join(30)


@pytest.fixture
def restartable(tmp_path: Path) -> Restart:
    """A daemon (no link) to stop and start again on one config: a tiny bundle, 5
    exploration grasps per condition, trained results on probation (no race) at alpha 0.001."""
    base = make_bundle(tmp_path / "incoming")
    cfg = agent_config(
        tmp_path,
        base,
        lifecycle={"exploration_grasps": 5},
        probation={"alpha": 0.001},
        rounds={"race": False},
    )

    def start() -> tuple[Daemon, threading.Thread]:
        d = Daemon(cfg, FakeDriver(p_success=0.8, grasp_time_s=0.002))
        return d, serve(d)

    return start
