"""The bridge driver passes the Driver contract against the sim bridge in another process."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("pybullet")

from drivers.bridge.client import BridgeDriver
from drivers.bridge.config import BridgeClientConfig
from testkit.bridges import SimBridgeProcess, free_port
from testkit.driver_contract import DriverContract

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sim_bridge() -> Iterator[SimBridgeProcess]:
    bridge = SimBridgeProcess(free_port(), "--objects", "3", "--seed", "11").start()
    yield bridge
    assert bridge.stop() == 0  # SIGTERM: a clean exit


class TestBridgeDriverContract(DriverContract):
    endpoint = ""

    @pytest.fixture(autouse=True)
    def _bridge(self, sim_bridge: SimBridgeProcess) -> None:
        type(self).endpoint = sim_bridge.endpoint

    def make_driver(self) -> BridgeDriver:
        return BridgeDriver(
            BridgeClientConfig(endpoint=self.endpoint, timeout_s=2.0, execute_timeout_s=5.0)
        )


def test_bridge_reports_the_sim_outcome_and_robot_id(sim_bridge: SimBridgeProcess) -> None:
    cfg = BridgeClientConfig(endpoint=sim_bridge.endpoint, robot_id="sim")
    with BridgeDriver(cfg) as d:
        assert d.hello["robot_id"] == "sim" and set(d.hello["capabilities"]) == {"shuffle", "reset"}
        d.observe()
        r = d.execute(np.zeros(3, np.float32))
        assert r.outcome is not None and r.outcome.sensed_by == "sim_height"
        assert set(r.outcome.detail) >= {"lifted", "max_height_m"}
        assert d.ping()["busy"] is None
