"""Driver selection by `type` with a typed table per driver type; typos name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, config_from_dict, load_config
from agent.drivers import make_driver
from drivers.bridge.client import BridgeDriver
from drivers.sim.cell import SimCell

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_sim_config_still_loads_and_builds_a_sim_cell() -> None:
    cfg = load_config(ROOT / "configs" / "sim.toml")
    assert cfg.driver.type == "sim" and cfg.driver.sim.schedule == ()
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
        ({"bridge": {"endpont": "x"}}, "unknown key driver.bridge.endpont"),
        ({"sim": {"schedul": []}}, "unknown key driver.sim.schedul"),
        ({"type": "ros"}, "'sim', 'bridge', 'import'"),
        ({"bridge": {"timeout_s": "1"}}, "driver.bridge.timeout_s must be a number"),
        ({"bridge": {"execute_timeout_s": 9.5}}, "driver.bridge.execute_timeout_s"),
        ({"sim": {"schedule": [[0, "fog"]]}}, "driver.sim.schedule[0]: unknown condition 'fog'"),
        (
            {"sim": {"schedule": [[0, "baseline", 1]]}},
            "driver.sim.schedule[0] must be an array of 2",
        ),
        (
            {"sim": {"schedule": [["a", "baseline"]]}},
            "driver.sim.schedule[0][0] must be an integer",
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


def test_bad_sim_option_names_the_key() -> None:
    cfg = config_from_dict({"driver": {"options": {"splt": "test"}}})
    with pytest.raises(ValueError, match=r"driver\.options\.splt.*allowed: .*split"):
        make_driver(cfg.driver)


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
        config_from_dict({"driver": {"camera": raw}})
    assert needle in str(ei.value)
