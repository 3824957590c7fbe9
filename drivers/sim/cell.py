"""SimCell: the pybullet grasping cell as a :class:`agent.driver.Driver`.

One grasp attempt = one decision (x, y, yaw): the gripper is placed above
(x, y) at ``yaw``, descends, closes, lifts and holds; success means an object
is above ``success_height_m`` for the whole hold. Lifted objects are dropped
back into the bin at a random spot (no scene reset per grasp, like a real
bin); objects that leave the tray are put back; a fresh set of objects is
loaded every ``refresh_every`` grasps. Everything random comes from one numpy
generator seeded by ``reset(seed)``, so a seed replays the same run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.driver import GraspOutcome, Observation, StartClose, StepResult
from agent.spec import Spec
from drivers.sim import look
from drivers.sim.camera import Camera, Frame, Lighting
from drivers.sim.conditions import (
    Condition,
    ExtendGripper,
    OffsetGripper,
    Transparent,
    make_condition,
)
from drivers.sim.config import SimConfig
from drivers.sim.gripper import Gripper, GripperGeometry
from drivers.sim.objects import object_ids, object_urdf
from drivers.sim.schedule import parse_schedule

HOME = (-0.205, 0.0, 0.10)
"""Where the gripper waits while the camera looks: the left edge of the image."""
HOME_YAW = 0.0
FLOOR_Z = 0.015
"""Top of the tray floor, metres."""
SPAWN_HALF = 0.10
"""Objects are dropped within +-SPAWN_HALF of the centre, metres."""
TRAY_HALF = 0.21
"""An object beyond this (or below the floor) has left the tray and is put back."""


@dataclass(frozen=True)
class Privileged:
    """Simulator-only ground truth of the last observation (scripted policy, tests)."""

    seg: npt.NDArray[np.int32]
    object_bodies: tuple[int, ...]
    floor_x: npt.NDArray[np.float64]
    floor_y: npt.NDArray[np.float64]


class SimCell(StartClose):
    """The pybullet cell; implements :class:`agent.driver.Driver` plus ``set_condition``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._spec = self.config.spec
        self._condition: Condition = make_condition(
            self.config.condition, self.config.condition_params
        )
        self._p: Any = None
        self._client = -1
        self._rng = np.random.default_rng(self.config.seed)
        self._schedule = parse_schedule(self.config.schedule)
        self._scheduled = -1
        self._camera = Camera(self._spec.image_width, self._spec.image_height)
        self._gripper: Gripper | None = None
        self._tray = -1
        self._objects: list[int] = []
        self._object_indices: tuple[int, ...] = ()
        self._grasps = 0
        self._step = 0
        self._last_frame: Frame | None = None
        self._background: npt.NDArray[np.uint8] | None = None
        self._shade_ref = 1.0
        self._data_root = Path()

    # -- Driver protocol -------------------------------------------------------------------

    @property
    def spec(self) -> Spec:
        return self._spec

    @property
    def condition(self) -> Condition:
        """The active condition."""
        return self._condition

    @property
    def grasps(self) -> int:
        """Grasp attempts since start."""
        return self._grasps

    def start(self) -> None:
        """Connect a headless pybullet client and build the scene."""
        if self._p is not None:
            return
        import pybullet
        import pybullet_data

        self._p = pybullet
        self._client = pybullet.connect(pybullet.DIRECT)
        self._data_root = Path(pybullet_data.getDataPath())
        self._reset_objects()
        self._apply_schedule()

    def _build_world(self, objects: tuple[int, ...]) -> None:
        """Empty the world and build tray, gripper and ``objects`` (indices into the split).

        Why the whole world and not just the objects: pybullet never gives back the
        memory of a removed body (~80 KB per object loaded and removed: the cell grew
        ~25 MB per 1,000 grasps at a refresh every 20), while resetSimulation frees it.
        So the cell never removes a body: every change of bodies (a fresh set of
        objects, a new gripper geometry) rebuilds the world. The tray and gripper cost
        about 18 ms a rebuild on a loaded 2-core machine, under 1 ms a grasp at a
        refresh every 20 grasps.
        The objects are loaded at the spawn height; the caller places them.
        """
        p, c = self._p, self._client
        ph = self.config.physics
        p.resetSimulation(physicsClientId=c)
        self._objects = []
        self._gripper = None
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        p.setPhysicsEngineParameter(
            fixedTimeStep=1.0 / ph.hz,
            numSolverIterations=ph.solver_iterations,
            physicsClientId=c,
        )
        self._tray = p.loadURDF(
            str(self._data_root / "tray" / "traybox.urdf"),
            [0, 0, 0],
            useFixedBase=True,
            physicsClientId=c,
        )
        p.changeVisualShape(self._tray, -1, rgbaColor=[0.62, 0.60, 0.56, 1], physicsClientId=c)
        self._gripper = Gripper(self._p, self._client, self._geometry())
        self._gripper.build(HOME)
        self._gripper.teleport(HOME, HOME_YAW)
        for index in objects:
            body = p.loadURDF(
                str(object_urdf(self._data_root, index)), [0, 0, 0.2], physicsClientId=c
            )
            p.changeDynamics(body, -1, lateralFriction=0.9, physicsClientId=c)
            self._objects.append(body)
        self._object_indices = objects

    def observe(self) -> Observation:
        """Render the bin with the gripper parked at the top edge of the view."""
        self._require_started()
        frame = self._render()
        self._last_frame = frame
        image = look.apply_effects(
            self._condition,
            frame,
            self._camera,
            self._objects,
            self._tray,
            self._background,
            self._shade_ref,
        )
        return Observation(image=image, step=0, timestamp=time.time())

    def execute(self, action: npt.NDArray[np.float32]) -> StepResult:
        """Run one full grasp attempt at the normalised ``action``."""
        self._require_started()
        x, y, yaw = self._spec.to_metric(action)
        t0 = self._grasps
        detail = self._grasp(x, y, yaw)
        self._grasps = t0 + 1
        success = detail["lifted"] > 0.5
        self._after_grasp()
        self._apply_schedule()
        outcome = GraspOutcome(success=success, sensed_by="sim_height", detail=detail)
        ph = self.config.physics
        steps = ph.descend_steps + ph.close_steps + ph.lift_steps + ph.hold_steps
        return StepResult(
            reward=(1.0 if success else 0.0) + self.config.step_penalty,
            done=True,
            outcome=outcome,
            duration_s=steps / ph.hz,
        )

    def shuffle(self) -> None:
        """Drop every object again at random spots (same objects)."""
        self._require_started()
        for body in self._objects:
            self._drop(body)
        self._settle(self.config.physics.settle_steps * 3)

    def reset(self, seed: int | None = None) -> None:
        """Reseed and rebuild the world with a fresh set of objects.

        The whole simulation is rebuilt either way (as at every object refresh), so
        the same seed and actions replay bit for bit.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        if self._p is None:
            return
        self._reset_objects()

    def close(self) -> None:
        if self._p is not None and self._client >= 0:
            try:
                self._p.disconnect(physicsClientId=self._client)
            finally:
                self._p = None
                self._client = -1

    # -- conditions ------------------------------------------------------------------------

    def set_condition(self, name: str, params: dict[str, float] | None = None) -> Condition:
        """Switch the condition at run time (rebuilds the gripper if its geometry changes)."""
        cond = make_condition(name, params)
        old_geom = self._geometry()
        self._condition = cond
        if self._p is not None:
            if self._geometry() != old_geom:
                self._rebuild_keeping_objects()
            self._refresh_condition_cache()
        return cond

    def _apply_schedule(self) -> None:
        """Switch to the scheduled condition (with the step's parameters, else the defaults)
        when the grasp count reaches its step."""
        i = self._schedule.index_at(self._grasps)
        if i >= 0 and i != self._scheduled:
            self._scheduled = i
            step = self._schedule.steps[i]
            # None for a step without parameters, as set_condition(name): a subclass may read None
            # as "none given" and set its own (bench/loop_false_alarms.py's SeveritySimCell does)
            self.set_condition(step.name, step.params_dict or None)

    def privileged(self) -> Privileged:
        """Ground truth of the last observation (simulation only)."""
        if self._last_frame is None:
            raise RuntimeError("observe() first")
        return Privileged(
            seg=self._last_frame.seg,
            object_bodies=tuple(self._objects),
            floor_x=self._camera.floor_x,
            floor_y=self._camera.floor_y,
        )

    # -- internals -------------------------------------------------------------------------

    def _require_started(self) -> None:
        if self._p is None:
            raise RuntimeError("SimCell not started: call start() or use it as a context manager")

    def _geometry(self) -> GripperGeometry:
        c = self._condition
        if isinstance(c, ExtendGripper):
            return GripperGeometry(
                extra_length_m=c.extra_length_cm / 100,
                width_scale=c.width_scale,
                pad_friction=c.pad_friction,
                grip_force_n=c.grip_force_n,
            )
        if isinstance(c, OffsetGripper):
            return GripperGeometry(offset_x_m=c.offset_cm / 100)
        return GripperGeometry()

    def _rebuild_keeping_objects(self) -> None:
        """A new world with a new gripper and the same objects where they were."""
        p, c = self._p, self._client
        state = [
            (
                p.getBasePositionAndOrientation(b, physicsClientId=c),
                p.getBaseVelocity(b, physicsClientId=c),
            )
            for b in self._objects
        ]
        self._build_world(self._object_indices)
        for body, ((pos, orn), (lin, ang)) in zip(self._objects, state, strict=True):
            p.resetBasePositionAndOrientation(body, pos, orn, physicsClientId=c)
            p.resetBaseVelocity(body, lin, ang, physicsClientId=c)

    def _render(self) -> Frame:
        assert self._gripper is not None
        self._gripper.teleport(HOME, HOME_YAW)
        return self._camera.render(self._p, self._client, look.lighting(self._condition))

    def _refresh_condition_cache(self) -> None:
        """Render what the image effects need (empty-bin background, floor brightness)."""
        p, c = self._p, self._client
        hidden = []
        for body in self._objects:
            pos, orn = p.getBasePositionAndOrientation(body, physicsClientId=c)
            hidden.append((body, pos, orn))
            p.resetBasePositionAndOrientation(body, [0, 0, -5], orn, physicsClientId=c)
        frame = self._render()
        for body, pos, orn in hidden:
            p.resetBasePositionAndOrientation(body, pos, orn, physicsClientId=c)
        self._background = frame.rgb
        neutral = self._camera.render(p, c, Lighting())
        floor = neutral.seg == self._tray
        self._shade_ref = float(neutral.rgb[floor].mean()) if floor.any() else 150.0

    def _reset_objects(self) -> None:
        """A fresh set of objects dropped into a fresh world (see :meth:`_build_world`)."""
        ids = object_ids(self.config.split)
        chosen = self._rng.choice(len(ids), size=self.config.n_objects, replace=False)
        self._build_world(tuple(ids[int(k)] for k in chosen))
        for body in self._objects:
            self._drop(body)
        self._settle(self.config.physics.settle_steps * 3)
        # the empty bin looks the same in every world (tray and gripper at home): rendered
        # once, and again only for the transparent composite (2 renders a refresh)
        if self._background is None or isinstance(self._condition, Transparent):
            self._refresh_condition_cache()

    def _drop(self, body: int) -> None:
        x, y = self._rng.uniform(-SPAWN_HALF, SPAWN_HALF, size=2)
        z = FLOOR_Z + 0.05 + self._rng.uniform(0.0, 0.05)
        orn = self._p.getQuaternionFromEuler(list(self._rng.uniform(-math.pi, math.pi, size=3)))
        self._p.resetBasePositionAndOrientation(body, [x, y, z], orn, physicsClientId=self._client)
        self._p.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0], physicsClientId=self._client)

    def _settle(self, steps: int) -> None:
        for _ in range(steps):
            self._p.stepSimulation(physicsClientId=self._client)

    def _heights(self) -> list[float]:
        p, c = self._p, self._client
        return [
            float(p.getBasePositionAndOrientation(b, physicsClientId=c)[0][2]) - FLOOR_Z
            for b in self._objects
        ]

    def _grasp(self, x: float, y: float, yaw: float) -> dict[str, float]:
        p, c = self._p, self._client
        g = self._gripper
        assert g is not None
        ph = self.config.physics
        top = FLOOR_Z + ph.approach_height_m + g.tip_depth()
        # The descent target is fixed for the stock gripper: longer fingers reach lower.
        bottom = FLOOR_Z + ph.grasp_clearance_m + g.tip_depth() - g.geometry.extra_length_m
        bottom = min(bottom, top)
        g.teleport((x, y, top), yaw)
        for i in range(1, ph.descend_steps + 1):
            z = top + (bottom - top) * i / ph.descend_steps
            g.drive((x, y, z), yaw)
            p.stepSimulation(physicsClientId=c)
        g.fingers(-0.005)
        for _ in range(ph.close_steps):
            p.stepSimulation(physicsClientId=c)
        lift_top = FLOOR_Z + ph.lift_height_m
        for i in range(1, ph.lift_steps + 1):
            z = bottom + (lift_top - bottom) * i / ph.lift_steps
            g.drive((x, y, z), yaw)
            p.stepSimulation(physicsClientId=c)
        held_steps = 0
        for _ in range(ph.hold_steps):
            p.stepSimulation(physicsClientId=c)
            if max(self._heights()) > self.config.success_height_m:
                held_steps += 1
        heights = self._heights()
        lifted = held_steps == ph.hold_steps
        return {
            "lifted": 1.0 if lifted else 0.0,
            "max_height_m": max(heights),
            "held_s": held_steps / ph.hz,
            "finger_opening_m": g.opening(),
        }

    def _after_grasp(self) -> None:
        g = self._gripper
        assert g is not None
        g.teleport(HOME, HOME_YAW)
        moved = False
        for body, h in zip(self._objects, self._heights(), strict=True):
            pos = self._p.getBasePositionAndOrientation(body, physicsClientId=self._client)[0]
            strayed = abs(pos[0]) > TRAY_HALF or abs(pos[1]) > TRAY_HALF or h < -0.05
            if h > 0.06 or strayed:
                self._drop(body)
                moved = True
        if moved:
            self._settle(self.config.physics.settle_steps)
        if self.config.refresh_every > 0 and self._grasps % self.config.refresh_every == 0:
            self._reset_objects()
