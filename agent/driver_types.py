"""The driver types installed with the agent, found by entry point, and ``[driver]`` through them.

A driver package registers each type it provides under the entry-point group
:data:`ENTRY_POINT_GROUP` (this project's pyproject.toml: ``[project.entry-points.
"robot_agent.drivers"]``, the entry's name is the ``type`` key, its object an
:class:`agent.driver.DriverType`). The agent reads that group and nothing else, so no agent
module imports a driver, and a driver added by another package needs no agent change.

Entry points live in the installed package's metadata, which ``pip install`` writes: a tree
whose pyproject.toml gained a type needs its install (or ``pip install -e .``) run again before
the agent sees it; until then :func:`driver_config` says so by name. Every function also takes
an explicit ``types`` mapping instead (tests, or a program that embeds the agent).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.driver import Driver, DriverType
from plumbing.config_loader import ConfigError, build_dataclass

ENTRY_POINT_GROUP = "robot_agent.drivers"
"""Entry-point group of driver types; the entry's name is the ``[driver] type`` value."""
DEFAULT_TYPE = "sim"
"""``[driver] type`` when the table does not say."""


class InstalledDriverTypes(Mapping[str, DriverType]):
    """The driver types of the entry-point group, each loaded when first looked up."""

    def __init__(self, group: str = ENTRY_POINT_GROUP) -> None:
        self.group = group
        self._entries: dict[str, importlib.metadata.EntryPoint] = {}
        for ep in importlib.metadata.entry_points(group=group):
            self._entries.setdefault(ep.name, ep)  # the first on sys.path wins, like imports
        self._loaded: dict[str, DriverType] = {}

    def __getitem__(self, name: str) -> DriverType:
        if name not in self._loaded:
            ep = self._entries[name]
            obj = ep.load()
            if not isinstance(obj, DriverType):
                raise TypeError(f"entry point {ep.value!r} ({self.group}) is not a DriverType")
            self._loaded[name] = obj
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


@functools.cache
def installed_types() -> Mapping[str, DriverType]:
    """The driver types registered in the installed packages' metadata (read once per process:
    scanning the metadata of every installed package is not free)."""
    return InstalledDriverTypes()


@dataclass(frozen=True)
class DriverConfig:
    """``[driver]``: ``type`` names a registered driver type; every other key of the table
    (sub-tables included) belongs to that type's own config class, which checks them."""

    type: str = DEFAULT_TYPE
    """A registered driver type ("sim", "bridge", "import"; `robot-agent config` names them)."""
    settings: Any = None
    """The type's own settings (its config class); None: its defaults, built by make_driver."""


def driver_config(
    table: Mapping[str, Any], types: Mapping[str, DriverType] | None = None, prefix: str = "driver."
) -> DriverConfig:
    """Build and check the ``[driver]`` table; ConfigError naming the key and allowed values."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a table")
    rest = dict(table)
    name = rest.pop("type", DEFAULT_TYPE)
    kind = driver_type(name, types, prefix)
    settings = build_dataclass(kind.config, rest, prefix)
    try:
        kind.check(settings, prefix)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return DriverConfig(type=name, settings=settings)


def make_driver(cfg: DriverConfig, types: Mapping[str, DriverType] | None = None) -> Driver:
    """Construct (not start) the configured driver; ValueError names a bad key."""
    kind = driver_type(cfg.type, types, "driver.")
    settings = kind.config() if cfg.settings is None else cfg.settings
    driver = kind.make(settings)
    if not isinstance(driver, Driver):
        raise ValueError(f"driver.type = {cfg.type!r} did not make a Driver")
    return driver


def driver_type(
    name: Any, types: Mapping[str, DriverType] | None = None, prefix: str = "driver."
) -> DriverType:
    """The registered type ``name``; ConfigError listing the registered ones (or saying that
    none are, and why)."""
    types = installed_types() if types is None else types
    if not types:
        raise ConfigError(
            f"{prefix}type = {name!r}: no driver types are registered (entry-point group "
            f"{ENTRY_POINT_GROUP!r} is empty); the installed package metadata predates it: "
            "run `pip install -e .` (or `pip install .`) again"
        )
    if not isinstance(name, str) or name not in types:
        allowed = ", ".join(repr(n) for n in types)
        raise ConfigError(f"{prefix}type = {name!r} is not allowed; allowed values: {allowed}")
    return types[name]


__all__ = [
    "DEFAULT_TYPE",
    "ENTRY_POINT_GROUP",
    "DriverConfig",
    "InstalledDriverTypes",
    "driver_config",
    "driver_type",
    "installed_types",
    "make_driver",
]
