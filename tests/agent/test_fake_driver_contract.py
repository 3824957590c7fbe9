"""The fake driver used by the agent tests passes the shared Driver contract."""

from __future__ import annotations

from tests.agent.fakes import FakeDriver
from tests.driver_contract import DriverContract


class TestFakeDriverContract(DriverContract):
    def make_driver(self) -> FakeDriver:
        return FakeDriver()
