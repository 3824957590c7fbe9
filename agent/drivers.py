"""Build the configured Driver from ``[driver]`` (selected by its ``type`` key)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from agent.config import DriverConfig
from agent.extras import missing_extras, missing_message
from drivers.base import Driver


def make_driver(cfg: DriverConfig) -> Driver:
    """Construct (not start) the driver; ValueError names a bad key.

    "sim" -> SimCell (``options`` override SimConfig fields, ``[driver.sim]`` its schedule),
    "bridge" -> BridgeDriver (``[driver.bridge]``; ``[driver.camera]`` when its source is set),
    "import" -> factory(seed=, **options).
    """
    if cfg.type == "sim":
        missing = missing_extras(["sim"])
        if missing:  # pybullet is imported only at start(): say it now
            raise ValueError(missing_message('driver.type = "sim"', missing))
        from drivers.sim.cell import SimCell, SimConfig

        allowed = {f.name for f in dataclasses.fields(SimConfig)} - {
            "seed",
            "condition",
            "schedule",
            "spec",
            "physics",
        }
        options: dict[str, Any] = dict(cfg.options)
        for key in options:
            if key not in allowed:
                names = ", ".join(sorted(allowed))
                raise ValueError(f"driver.options.{key}: not a sim setting; allowed: {names}")
        return SimCell(
            SimConfig(seed=cfg.seed, condition=cfg.condition, schedule=cfg.sim.schedule, **options)
        )
    if cfg.type == "bridge":
        from drivers.bridge.client import BridgeDriver
        from drivers.camera import Camera

        camera = Camera(cfg.camera) if cfg.camera.source else None
        return BridgeDriver(cfg.bridge, camera=camera)
    module, _, attr = cfg.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"driver.factory = {cfg.factory!r} cannot be imported: {exc}") from exc
    driver = factory(seed=cfg.seed, **cfg.options)
    if not isinstance(driver, Driver):
        raise ValueError(f"driver.factory {cfg.factory!r} did not return a Driver")
    return driver
