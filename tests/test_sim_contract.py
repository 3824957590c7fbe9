"""The sim cell passes the Driver contract."""

from __future__ import annotations

from drivers.sim.cell import SimCell
from drivers.sim.config import SimConfig
from testkit.driver_contract import DriverContract


class TestSimCellContract(DriverContract):
    def make_driver(self) -> SimCell:
        return SimCell(SimConfig(seed=11, n_objects=3))
