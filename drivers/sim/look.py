"""How a condition changes what the camera sees: the light it sets and the image effects it
lays over a rendered frame (pure: numpy on a frame; no pybullet).

The cell renders, then asks here; the effects themselves are in :mod:`drivers.sim.effects`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from drivers.sim import effects
from drivers.sim.camera import Camera, Frame, Lighting
from drivers.sim.conditions import Checkerboard, Condition, HarshLighting, Transparent


def lighting(cond: Condition) -> Lighting:
    """The scene light under ``cond``: a low, strong spot for harsh lighting, else the default."""
    if isinstance(cond, HarshLighting) and cond.intensity > 0:
        az, el = math.radians(cond.light_azimuth_deg), math.radians(cond.light_elevation_deg)
        k = cond.intensity
        return Lighting(
            direction=(math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)),
            ambient=0.6 - 0.45 * k,
            diffuse=0.45 + 0.75 * k,
            specular=0.05 + 0.4 * k,
            shadow=True,
        )
    return Lighting()


def apply_effects(
    cond: Condition,
    frame: Frame,
    cam: Camera,
    objects: Sequence[int],
    tray: int,
    background: npt.NDArray[np.uint8] | None,
    shade_ref: float,
) -> npt.NDArray[np.uint8]:
    """The image the policy sees: ``frame`` with ``cond``'s effects laid over it.

    ``objects``/``tray``: body ids in the segmentation; ``background``: the empty bin (for
    see-through objects); ``shade_ref``: the floor's brightness under neutral light.
    """
    rgb = frame.rgb
    if isinstance(cond, Transparent) and background is not None:
        mask = np.isin(frame.seg, np.asarray(objects, dtype=np.int32))
        rgb = effects.see_through(rgb, background, mask, cond.opacity, cond.edge_highlight)
    if isinstance(cond, Checkerboard):
        rgb = effects.checker_floor(
            rgb,
            frame.seg == tray,
            cam.floor_x,
            cam.floor_y,
            cond.square_cm / 100,
            cond.contrast,
            shade_ref,
        )
    if isinstance(cond, HarshLighting):
        rgb = effects.glare(
            rgb,
            cam.floor_x,
            cam.floor_y,
            cond.spot_x,
            cond.spot_y,
            cond.spot_radius_m,
            cond.intensity,
        )
    return rgb
