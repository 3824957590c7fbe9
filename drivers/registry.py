"""The driver types this package provides, by ``[driver] type``: config class and factory.

The agent finds them through the entry-point group ``robot_agent.drivers`` of pyproject.toml
(one entry per name below, e.g. ``sim = "drivers.registry:SIM"``; see
:mod:`agent.driver_types`), never by importing this module. :data:`BUILTIN` is the same
mapping for code that holds this package already (tests, bench scripts, an embedding program)
and passes it to the agent explicitly.

Importing this module loads configs only: each factory imports its driver (and pybullet,
OpenCV, ZeroMQ) when it is called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from agent.driver import Driver, DriverType
from drivers.bridge.config import BridgeDriverSettings
from drivers.bridge.config import check_settings as check_bridge
from drivers.sim.config import SimDriverSettings, cell_config
from drivers.sim.config import check_settings as check_sim
from plumbing.extras import missing_extras, missing_message


def _make_sim(s: SimDriverSettings) -> Driver:
    missing = missing_extras(["sim"])
    if missing:  # pybullet is imported only at start(): say it now
        raise ValueError(missing_message('driver.type = "sim"', missing))
    from drivers.sim.cell import SimCell

    return SimCell(cell_config(s))


def _make_bridge(s: BridgeDriverSettings) -> Driver:
    from drivers.bridge.client import BridgeDriver
    from drivers.camera import Camera

    return BridgeDriver(s.bridge, camera=Camera(s.camera) if s.camera.source else None)


@dataclass(frozen=True)
class ImportDriverSettings:
    """``[driver]`` with ``type = "import"``: a driver from any importable factory."""

    factory: str = ""
    """"package.module:callable" returning a Driver (called with seed= and the options)."""
    seed: int = 0
    """Passed to the factory as ``seed``."""
    options: dict[str, Any] = field(default_factory=dict)
    """The factory's other keyword arguments."""


def _check_import(s: ImportDriverSettings, prefix: str) -> None:
    if ":" not in s.factory:
        raise ValueError(
            f"{prefix}factory = {s.factory!r}: type 'import' needs 'package.module:callable'"
        )


def _make_import(s: ImportDriverSettings) -> Driver:
    module, _, attr = s.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"driver.factory = {s.factory!r} cannot be imported: {exc}") from exc
    driver = factory(seed=s.seed, **s.options)
    if not isinstance(driver, Driver):
        raise ValueError(f"driver.factory {s.factory!r} did not return a Driver")
    return driver


SIM = DriverType(
    SimDriverSettings, _make_sim, check_sim, "the pybullet sim cell (needs the [sim] extra)"
)
BRIDGE = DriverType(BridgeDriverSettings, _make_bridge, check_bridge, "a robot bridge process")
IMPORT = DriverType(
    ImportDriverSettings, _make_import, _check_import, "any factory = 'package.module:callable'"
)

BUILTIN: dict[str, DriverType] = {"sim": SIM, "bridge": BRIDGE, "import": IMPORT}
"""Every type above by its ``[driver] type`` name (the entry points list the same)."""
