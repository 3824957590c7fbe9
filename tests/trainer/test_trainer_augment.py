"""Flip/rotation augmentation keeps image and action consistent."""

from __future__ import annotations

import math

import numpy as np

from agent.spec import DEFAULT_SPEC
from trainer.augment import (
    allowed_transforms,
    augment,
    draw_transforms,
    quarter_turn_ok,
    transform_actions,
)
from trainer.qnet import PixelMapping

PM = PixelMapping()
S = 64


def _pixel(x_m: float, y_m: float) -> tuple[int, int]:
    col = (x_m - PM.centre_x_m) / PM.half_width_m * S / 2 + S / 2
    row = S / 2 - (y_m - PM.centre_y_m) / PM.half_height_m * S / 2
    return math.floor(row), math.floor(col)


def _marked(action: np.ndarray) -> np.ndarray:
    """An image with a bright grasp point and a dimmer mark 3 cm along the yaw axis."""
    x, y, yaw = DEFAULT_SPEC.to_metric(action)
    img = np.zeros((1, S, S, 3), dtype=np.uint8)
    img[0, *_pixel(x, y)] = 255
    img[0, *_pixel(x + 0.03 * math.cos(yaw), y + 0.03 * math.sin(yaw))] = 100
    return img


def _marks_of(img: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    a = img[0, :, :, 0]
    bright = np.argwhere(a == 255)[0]
    dim = np.argwhere(a == 100)[0]
    return (int(bright[0]), int(bright[1])), (int(dim[0]), int(dim[1]))


def test_every_transform_moves_the_grasp_mark_with_the_action() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.uniform([-0.7, -1, -1], [0.7, 1, 1]).astype(np.float32)
        img = _marked(a)
        for k in range(8):
            ks = np.array([k])
            t_img, _, t_act = augment(img, img, a[None], ks, DEFAULT_SPEC)
            x, y, yaw = DEFAULT_SPEC.to_metric(t_act[0])
            centre, along = _marks_of(t_img)
            assert abs(centre[0] - _pixel(x, y)[0]) <= 1 and abs(centre[1] - _pixel(x, y)[1]) <= 1
            # The yaw axis mark sits on either end of the (symmetric) gripper axis.
            ends = [
                _pixel(x + s * 0.03 * math.cos(yaw), y + s * 0.03 * math.sin(yaw)) for s in (1, -1)
            ]
            assert any(abs(along[0] - e[0]) <= 1 and abs(along[1] - e[1]) <= 1 for e in ends), k


def test_actions_stay_in_bounds_and_wide_grasps_skip_quarter_turns() -> None:
    g = np.random.default_rng(0)
    actions = g.uniform(-1, 1, (4000, 3)).astype(np.float32)
    ks = draw_transforms(actions, DEFAULT_SPEC, allowed_transforms(PM), g)
    assert set(ks.tolist()) == set(range(8))
    assert quarter_turn_ok(actions[ks % 2 == 1], DEFAULT_SPEC).all()
    for k in range(8):
        sel = actions[ks == k]
        out = transform_actions(sel, k, DEFAULT_SPEC)
        assert np.abs(out).max() <= 1.0
        x, y = out[:, 0] * DEFAULT_SPEC.workspace_x_m, out[:, 1] * DEFAULT_SPEC.workspace_y_m
        x0, y0 = sel[:, 0] * DEFAULT_SPEC.workspace_x_m, sel[:, 1] * DEFAULT_SPEC.workspace_y_m
        np.testing.assert_allclose(x * x + y * y, x0 * x0 + y0 * y0, atol=1e-6)  # no clipping


def test_non_square_or_offset_camera_limits_the_transforms() -> None:
    assert allowed_transforms(PixelMapping(half_width_m=0.3, half_height_m=0.25)) == (0, 2, 4, 6)
    assert allowed_transforms(PixelMapping(centre_x_m=0.05)) == (0,)
