"""Build the configured Driver from ``[driver]`` (selected by its ``type`` key)."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from agent.config import DriverConfig
from drivers.base import Driver


def make_driver(cfg: DriverConfig) -> Driver:
    """Construct (not start) the driver: "sim" -> SimCell, "import" -> factory(**options)."""
    if cfg.type == "sim":
        if importlib.util.find_spec("pybullet") is None:  # imported only at start(): say it now
            raise ValueError(
                'driver.type = "sim" needs the [sim] extra (pybullet), not installed here: '
                "pip install '.[sim]'"
            )
        from drivers.sim.cell import SimCell, SimConfig

        options: dict[str, Any] = dict(cfg.options)
        return SimCell(SimConfig(seed=cfg.seed, condition=cfg.condition, **options))
    module, _, attr = cfg.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"driver.factory = {cfg.factory!r} cannot be imported: {exc}") from exc
    driver = factory(seed=cfg.seed, **cfg.options)
    if not isinstance(driver, Driver):
        raise ValueError(f"driver.factory {cfg.factory!r} did not return a Driver")
    return driver
