"""The cell's fixed top-down camera: matrices, pixel<->floor mapping, rendering call.

The image covers x in [-HALF_EXTENT, HALF_EXTENT] left to right and y in
[HALF_EXTENT, -HALF_EXTENT] top to bottom on the plane z = 0, so pixel
coordinates map linearly to floor coordinates (used by the checker floor,
the scripted policy and the Q-network's action-to-pixel mapping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

HALF_EXTENT = 0.25
"""Half the floor width seen by the camera, metres (at z = 0)."""
CAMERA_HEIGHT = 0.7
"""Camera height above the floor, metres."""


@dataclass(frozen=True)
class Lighting:
    """TinyRenderer light settings."""

    direction: tuple[float, float, float] = (0.3, 0.4, 1.0)
    """Vector pointing towards the light."""
    ambient: float = 0.6
    """Ambient coefficient."""
    diffuse: float = 0.45
    """Diffuse coefficient."""
    specular: float = 0.05
    """Specular coefficient."""
    shadow: bool = False
    """Cast shadows (hard light)."""


@dataclass(frozen=True)
class Frame:
    """One rendered frame: RGB image and the segmentation mask (body unique ids, -1 = none)."""

    rgb: npt.NDArray[np.uint8]
    seg: npt.NDArray[np.int32]


class Camera:
    """Renders the cell from above at a given resolution."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        fov = 2.0 * math.degrees(math.atan(HALF_EXTENT / CAMERA_HEIGHT))
        self._fov = fov
        u = (np.arange(width) + 0.5) / width * 2.0 - 1.0
        v = 1.0 - (np.arange(height) + 0.5) / height * 2.0
        self.floor_x, self.floor_y = np.meshgrid(u * HALF_EXTENT, v * HALF_EXTENT)
        """Floor (z = 0) coordinates of each pixel centre, metres."""

    def matrices(self, p: Any) -> tuple[Any, Any]:
        view = p.computeViewMatrix(
            cameraEyePosition=[0, 0, CAMERA_HEIGHT],
            cameraTargetPosition=[0, 0, 0],
            cameraUpVector=[0, 1, 0],
        )
        proj = p.computeProjectionMatrixFOV(
            fov=self._fov, aspect=self.width / self.height, nearVal=0.3, farVal=1.0
        )
        return view, proj

    def render(self, p: Any, client: int, lighting: Lighting) -> Frame:
        """Render RGB + segmentation with TinyRenderer (no GPU, no display)."""
        view, proj = self.matrices(p)
        _, _, rgba, _, seg = p.getCameraImage(
            self.width,
            self.height,
            viewMatrix=view,
            projectionMatrix=proj,
            renderer=p.ER_TINY_RENDERER,
            lightDirection=list(lighting.direction),
            lightAmbientCoeff=lighting.ambient,
            lightDiffuseCoeff=lighting.diffuse,
            lightSpecularCoeff=lighting.specular,
            shadow=int(lighting.shadow),
            physicsClientId=client,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(self.height, self.width, 4)[..., :3]
        mask = np.asarray(seg, dtype=np.int32).reshape(self.height, self.width)
        # Segmentation packs link index in the high bits; keep the body id.
        body = np.where(mask >= 0, mask & ((1 << 24) - 1), -1).astype(np.int32)
        return Frame(rgb=np.ascontiguousarray(rgb), seg=body)
