"""Observation/action spec: the one source of truth shared by drivers, agent and trainer.

The policy sees one top-down RGB image (uint8, H x W x 3) and picks one grasp
``(x, y, yaw)``, each normalised to [-1, 1]. Horizon 1: a single decision per
grasp attempt (see docs/sim.md for why). Physical scales (metres, radians) live
here too so that the sim cell, scripted policy and plots agree on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

SPEC_VERSION = 1


@dataclass(frozen=True)
class Spec:
    """Shapes, dtypes and bounds of observations and actions."""

    image_height: int = 64
    """Camera image rows."""
    image_width: int = 64
    """Camera image columns."""
    image_channels: int = 3
    """RGB."""
    action_dim: int = 3
    """(x, y, yaw), normalised."""
    action_low: tuple[float, ...] = (-1.0, -1.0, -1.0)
    """Lower bound of each normalised action dimension."""
    action_high: tuple[float, ...] = (1.0, 1.0, 1.0)
    """Upper bound of each normalised action dimension."""
    horizon: int = 1
    """Decisions per grasp attempt."""
    workspace_x_m: float = 0.20
    """Half-range of the grasp x coordinate in metres (action x = 1 maps to +0.20 m)."""
    workspace_y_m: float = 0.15
    """Half-range of the grasp y coordinate in metres."""
    yaw_range_rad: float = math.pi / 2
    """Half-range of the gripper yaw; a parallel gripper is symmetric under 180 degrees."""
    version: int = field(default=SPEC_VERSION)
    """Spec version; bumped on any incompatible change."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_height, self.image_width, self.image_channels)

    @property
    def image_dtype(self) -> np.dtype[np.uint8]:
        return np.dtype(np.uint8)

    @property
    def low(self) -> npt.NDArray[np.float32]:
        return np.asarray(self.action_low, dtype=np.float32)

    @property
    def high(self) -> npt.NDArray[np.float32]:
        return np.asarray(self.action_high, dtype=np.float32)

    def clip_action(self, action: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Return ``action`` as float32 clipped into the bounds; raises on wrong shape or NaN."""
        a = np.asarray(action, dtype=np.float32)
        if a.shape[-1:] != (self.action_dim,):
            raise ValueError(f"action must end in dimension {self.action_dim}, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("action contains NaN or inf")
        return np.clip(a, self.low, self.high)

    def check_image(self, image: npt.NDArray[Any]) -> None:
        """Raise ValueError unless ``image`` matches the spec's shape and dtype."""
        if image.dtype != np.uint8 or image.shape != self.image_shape:
            raise ValueError(
                f"image must be uint8 {self.image_shape}, got {image.dtype} {image.shape}"
            )

    def to_metric(self, action: npt.ArrayLike) -> tuple[float, float, float]:
        """Map a normalised action to (x metres, y metres, yaw radians) in the cell frame."""
        a = self.clip_action(action)
        return (
            float(a[0]) * self.workspace_x_m,
            float(a[1]) * self.workspace_y_m,
            float(a[2]) * self.yaw_range_rad,
        )

    def from_metric(self, x: float, y: float, yaw: float) -> npt.NDArray[np.float32]:
        """Inverse of :meth:`to_metric`; yaw is wrapped into [-pi/2, pi/2) first."""
        yaw = (yaw + math.pi / 2) % math.pi - math.pi / 2
        a = np.array(
            [x / self.workspace_x_m, y / self.workspace_y_m, yaw / self.yaw_range_rad],
            dtype=np.float32,
        )
        return np.clip(a, self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for bundle meta.json and wire headers)."""
        return {
            "version": self.version,
            "image_shape": list(self.image_shape),
            "image_dtype": "uint8",
            "action_dim": self.action_dim,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
            "horizon": self.horizon,
            "workspace_x_m": self.workspace_x_m,
            "workspace_y_m": self.workspace_y_m,
            "yaw_range_rad": self.yaw_range_rad,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Spec:
        """Parse :meth:`to_dict` output; raises ValueError on a missing or bad field."""
        try:
            h, w, c = (int(v) for v in d["image_shape"])
            return cls(
                image_height=h,
                image_width=w,
                image_channels=c,
                action_dim=int(d["action_dim"]),
                action_low=tuple(float(v) for v in d["action_low"]),
                action_high=tuple(float(v) for v in d["action_high"]),
                horizon=int(d["horizon"]),
                workspace_x_m=float(d["workspace_x_m"]),
                workspace_y_m=float(d["workspace_y_m"]),
                yaw_range_rad=float(d["yaw_range_rad"]),
                version=int(d["version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad spec: {exc!r}") from exc


DEFAULT_SPEC = Spec()
"""The spec every component uses unless told otherwise."""

# ONNX graph contract (see docs/bundle.md): one raw image, N candidate actions -> N Q-values.
ONNX_IMAGE_INPUT = "image"
"""uint8 [H, W, 3]: the raw camera image; normalisation happens inside the graph."""
ONNX_ACTIONS_INPUT = "actions"
"""float32 [N, action_dim]: candidate actions, N dynamic."""
ONNX_Q_OUTPUT = "q"
"""float32 [N]: P(success) of each candidate, in [0, 1]."""
