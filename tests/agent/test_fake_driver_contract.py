"""The fake driver used by the agent tests passes the shared Driver contract."""

from __future__ import annotations

from testkit.driver_contract import DriverContract
from testkit.fakes import FakeDriver


class TestFakeDriverContract(DriverContract):
    def make_driver(self) -> FakeDriver:
        return FakeDriver()
