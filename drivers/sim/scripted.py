"""Reference grasp policies for the sim cell: scripted (privileged) and uniform random.

The scripted policy is the data-collection prior for pre-training: it picks a
visible object from the segmentation mask, aims at the centroid of its
pixels and closes across the object's principal axis. It never looks at the
condition, so conditions that move the gripper or hide objects hurt it too.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from agent.spec import Spec
from drivers.sim.cell import Privileged


class RandomPolicy:
    """Uniform random actions inside the spec's bounds."""

    def __init__(self, spec: Spec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.rng = rng

    def act(
        self, image: npt.NDArray[np.uint8], truth: Privileged | None = None
    ) -> npt.NDArray[np.float32]:
        del image, truth
        return self.rng.uniform(self.spec.low, self.spec.high).astype(np.float32)


class ScriptedPolicy:
    """Centroid + principal-axis grasp on a random visible object (needs ground truth)."""

    def __init__(
        self,
        spec: Spec,
        rng: np.random.Generator,
        position_noise_m: float = 0.0,
        min_pixels: int = 3,
    ) -> None:
        self.spec = spec
        self.rng = rng
        self.position_noise_m = position_noise_m
        self.min_pixels = min_pixels

    def act(
        self, image: npt.NDArray[np.uint8], truth: Privileged | None = None
    ) -> npt.NDArray[np.float32]:
        """Pick a grasp; falls back to a random action when no object is visible."""
        del image
        if truth is None:
            raise ValueError(
                "ScriptedPolicy needs the simulator's ground truth (cell.privileged())"
            )
        visible = [b for b in truth.object_bodies if int((truth.seg == b).sum()) >= self.min_pixels]
        if not visible:
            return self.rng.uniform(self.spec.low, self.spec.high).astype(np.float32)
        body = visible[int(self.rng.integers(len(visible)))]
        mask = truth.seg == body
        xs = truth.floor_x[mask]
        ys = truth.floor_y[mask]
        cx, cy = float(xs.mean()), float(ys.mean())
        yaw = principal_yaw(xs - cx, ys - cy)
        if yaw is None:
            yaw = float(self.rng.uniform(-math.pi / 2, math.pi / 2))
        if self.position_noise_m > 0:
            cx += float(self.rng.normal(0, self.position_noise_m))
            cy += float(self.rng.normal(0, self.position_noise_m))
        return self.spec.from_metric(cx, cy, yaw)


def principal_yaw(dx: npt.NDArray[np.float64], dy: npt.NDArray[np.float64]) -> float | None:
    """Yaw that closes the fingers across the long axis of a pixel blob (None if round/tiny)."""
    if dx.size < 3:
        return None
    cov = np.cov(np.stack([dx, dy]))
    evals, evecs = np.linalg.eigh(cov)
    if evals[1] < 1.2 * max(evals[0], 1e-12):
        return None
    major = evecs[:, 1]
    # Fingers close along the gripper's y axis, which sits at yaw + 90 degrees;
    # closing across the major axis means yaw = the major axis angle.
    return math.atan2(float(major[1]), float(major[0]))
