"""Driver selection by `type` with a typed table per driver type; typos name the key.

The driver types come from the entry-point group (the installed metadata) unless a test
passes them explicitly (drivers.registry.BUILTIN, or a fake type)."""

from __future__ import annotations

import importlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, config_from_dict, example_toml, load_config
from agent.driver import DriverType
from agent.driver_types import ENTRY_POINT_GROUP, InstalledDriverTypes, make_driver
from drivers.bridge.client import BridgeDriver
from drivers.registry import BUILTIN
from drivers.sim.cell import SimCell
from plumbing.config_loader import ConfigError
from testkit.fakes import FakeDriver

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_sim_config_still_loads_and_builds_a_sim_cell() -> None:
    cfg = load_config(ROOT / "configs" / "sim.toml")
    assert cfg.driver.type == "sim" and cfg.driver.settings.sim.schedule == ()
    cell = make_driver(cfg.driver)
    assert isinstance(cell, SimCell) and cell.config.split == "test"


def test_sim_schedule_from_toml_reaches_the_cell(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text(
        '[driver]\ntype = "sim"\n[driver.sim]\n'
        'schedule = [[0, "baseline"], [300, "harsh_lighting"], [600, "transparent"]]\n'
    )
    cfg = load_config(p)
    cell = make_driver(cfg.driver)
    assert isinstance(cell, SimCell)
    assert cell.config.schedule == ((0, "baseline"), (300, "harsh_lighting"), (600, "transparent"))


def test_sim_schedule_step_parameters_from_toml_reach_the_cell(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text(
        '[driver]\ntype = "sim"\n[driver.sim]\n'
        'schedule = [[0, "baseline"], [300, "harsh_lighting", {light_azimuth_deg = 200}]]\n'
    )
    cell = make_driver(load_config(p).driver)
    assert isinstance(cell, SimCell)
    assert cell.config.schedule == (
        (0, "baseline"),
        (300, "harsh_lighting", {"light_azimuth_deg": 200.0}),
    )


def test_bridge_type_builds_a_bridge_driver_with_its_table() -> None:
    cfg = config_from_dict(
        {
            "driver": {
                "type": "bridge",
                "bridge": {"endpoint": "tcp://127.0.0.1:6001", "timeout_s": 0.5},
            }
        }
    )
    d = make_driver(cfg.driver)
    assert isinstance(d, BridgeDriver)
    assert d.cfg.endpoint == "tcp://127.0.0.1:6001" and d.cfg.timeout_s == 0.5


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"type": "bridge", "bridge": {"endpont": "x"}}, "unknown key driver.bridge.endpont"),
        ({"sim": {"schedul": []}}, "unknown key driver.sim.schedul"),
        (
            {"type": "bridge", "bridge": {"timeout_s": "1"}},
            "driver.bridge.timeout_s must be a number",
        ),
        (
            {"type": "bridge", "bridge": {"execute_timeout_s": 9.5}},
            "driver.bridge.execute_timeout_s",
        ),
        ({"bridge": {"timeout_s": 1.0}}, "unknown key driver.bridge; allowed keys here: condition"),
        ({"condition": "fog"}, "driver.condition = 'fog': unknown condition"),
        ({"type": "import", "factory": "nocolon"}, "type 'import' needs 'package.module:callable'"),
        ({"type": "import", "condition": "x"}, "unknown key driver.condition"),
        ({"sim": {"schedule": [[0, "fog"]]}}, "driver.sim.schedule[0]: unknown condition 'fog'"),
        (
            {"sim": {"schedule": [[0, "baseline", 1]]}},
            "driver.sim.schedule[0]: parameters 1 must be a table",
        ),
        (
            {"sim": {"schedule": [[0, "baseline", {}, 4]]}},
            "driver.sim.schedule[0] = [0, 'baseline', {}, 4]: must be [grasp_count, ",
        ),
        (
            {"sim": {"schedule": [["a", "baseline"]]}},
            "driver.sim.schedule[0]: grasp count 'a' must be an integer",
        ),
        (
            {"sim": {"schedule": [[0, "baseline"], [9, "harsh_lighting", {"azimuth": 200}]]}},
            "driver.sim.schedule[1]: condition 'harsh_lighting' has no parameter 'azimuth'; "
            "allowed: intensity, light_azimuth_deg",
        ),
        (
            {"sim": {"schedule": [[0, "transparent", {"opacity": "high"}]]}},
            "driver.sim.schedule[0]: condition 'transparent' parameter 'opacity' must be a number",
        ),
        (
            {"type": "bridge", "bridge": {"endpoint": "tcp://10.0.0.2:5570"}},
            "needs CURVE keys",
        ),
    ],
)
def test_driver_config_errors_name_the_key(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"driver": raw})
    assert needle in str(ei.value)


def test_bad_sim_option_names_the_key_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match=r"driver\.options\.splt.*allowed: .*split"):
        config_from_dict({"driver": {"options": {"splt": "test"}}})


def test_unknown_driver_type_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"driver": {"type": "ros"}})
    msg = str(ei.value)
    assert "driver.type = 'ros' is not allowed; allowed values:" in msg
    assert all(repr(name) in msg for name in ("sim", "bridge", "import"))
    fake = {"fake": DriverType(AgentConfig, lambda s: FakeDriver())}  # any dataclass will do
    with pytest.raises(ConfigError, match=r"allowed values: 'fake'$"):
        config_from_dict({"driver": {"type": "sim"}}, fake)


def test_a_driver_type_passed_in_is_built_without_the_entry_points() -> None:
    @dataclass(frozen=True)
    class FakeSettings:
        successes: int = 1
        """Grasps that succeed."""

    made: list[FakeSettings] = []

    def make(s: FakeSettings) -> FakeDriver:
        made.append(s)
        return FakeDriver()

    types = {"fake": DriverType(FakeSettings, make)}
    cfg = config_from_dict({"driver": {"type": "fake", "successes": 3}}, types)
    assert isinstance(make_driver(cfg.driver, types), FakeDriver) and made == [FakeSettings(3)]
    with pytest.raises(ConfigError, match=r"unknown key driver\.sim; allowed keys here: successes"):
        config_from_dict({"driver": {"type": "fake", "sim": {}}}, types)


def test_no_registered_driver_types_says_to_reinstall() -> None:
    with pytest.raises(ConfigError, match=r"no driver types are registered.*pip install -e \."):
        config_from_dict({}, InstalledDriverTypes("robot_agent.no_such_group"))


def test_entry_points_of_pyproject_name_every_builtin_type() -> None:
    """pyproject.toml's group and drivers.registry agree, and the installed metadata (the
    lookup the agent uses) resolves each name to the same DriverType."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        eps = tomllib.load(f)["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert set(eps) == set(BUILTIN)
    for name, value in eps.items():
        module, _, attr = value.partition(":")
        assert getattr(importlib.import_module(module), attr) is BUILTIN[name]
    installed = InstalledDriverTypes()
    assert set(installed) == set(BUILTIN) and all(installed[n] is BUILTIN[n] for n in BUILTIN)


def test_example_toml_lists_the_default_driver_keys_and_names_the_others() -> None:
    text = example_toml(BUILTIN)
    assert '[driver]\n# "sim" (' in text and '"bridge" (a robot bridge process)' in text
    assert "[driver.sim]\n" in text and "[driver.bridge]" not in text
    assert config_from_dict(tomllib.loads(text), BUILTIN).driver == config_from_dict({}).driver


def test_bridge_with_a_local_camera_from_config(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "driver": {
                "type": "bridge",
                "camera": {"source": str(tmp_path / "cam.avi"), "crop": [0, 0, 100, 100]},
            }
        }
    )
    d = make_driver(cfg.driver)
    assert isinstance(d, BridgeDriver) and d.camera is not None
    assert d.camera.cfg.crop == (0, 0, 100, 100)
    plain = make_driver(config_from_dict({"driver": {"type": "bridge"}}).driver)
    assert isinstance(plain, BridgeDriver) and plain.camera is None


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"crop": [1, 2, 3]}, "driver.camera.crop = (1, 2, 3)"),
        ({"read_timeout_s": 0}, "driver.camera.read_timeout_s must be > 0"),
        ({"mode": "newest"}, "'auto', 'latest', 'sequential'"),
        ({"sorce": "0"}, "unknown key driver.camera.sorce"),
    ],
)
def test_camera_config_errors_name_the_key(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"driver": {"type": "bridge", "camera": raw}})
    assert needle in str(ei.value)
