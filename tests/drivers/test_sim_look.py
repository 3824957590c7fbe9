"""What a condition does to the camera image, without pybullet (drivers/sim/look.py)."""

from __future__ import annotations

import numpy as np

from drivers.sim.camera import Camera, Frame, Lighting
from drivers.sim.conditions import make_condition
from drivers.sim.look import apply_effects, lighting

TRAY, OBJECT = 1, 7


def _frame() -> Frame:
    rgb = np.full((16, 16, 3), 120, np.uint8)
    seg = np.full((16, 16), TRAY, np.int32)
    seg[4:8, 4:8] = OBJECT
    rgb[4:8, 4:8] = (200, 30, 30)
    return Frame(rgb=rgb, seg=seg)


def _look(name: str, background: np.ndarray | None = None) -> np.ndarray:
    return apply_effects(
        make_condition(name), _frame(), Camera(16, 16), [OBJECT], TRAY, background, 120.0
    )


def test_baseline_and_the_gripper_conditions_leave_the_image_alone() -> None:
    for name in ("baseline", "extend_gripper", "offset_gripper"):
        assert np.array_equal(_look(name), _frame().rgb)
        assert lighting(make_condition(name)) == Lighting()


def test_transparent_objects_show_the_empty_bin_through_them() -> None:
    background = np.full((16, 16, 3), 120, np.uint8)
    img = _look("transparent", background)
    inside = img[5:7, 5:7].astype(int)  # off the rim: 10 % object, 90 % bin
    assert abs(inside[..., 0].mean() - 120) < abs(200 - 120) / 4
    assert np.array_equal(img[10:, 10:], background[10:, 10:])
    assert np.array_equal(_look("transparent", None), _frame().rgb)  # nothing to see through


def test_checkerboard_paints_the_floor_only() -> None:
    img = _look("checkerboard")
    floor = _frame().seg == TRAY
    assert len(np.unique(img[floor].reshape(-1, 3), axis=0)) >= 2
    assert np.array_equal(img[~floor], _frame().rgb[~floor])


def test_harsh_lighting_sets_a_low_shadowing_light_and_a_glare() -> None:
    light = lighting(make_condition("harsh_lighting"))
    assert light.shadow and light.diffuse > Lighting().diffuse and light.direction[2] < 0.5
    assert not np.array_equal(_look("harsh_lighting"), _frame().rgb)
    assert lighting(make_condition("harsh_lighting", {"intensity": 0.0})) == Lighting()
