"""Fixtures: a daemon on the fake driver in a thread, with real loopback sockets and SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.daemon import Running, agent_config, start_in_thread
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
