"""A floating parallel-jaw gripper built in pybullet (palm + two prismatic fingers).

Why floating and not an arm: an arm adds inverse kinematics and ~7 joints to
every physics step for no change to what the policy decides (a top-down grasp
pose); a floating gripper on a force-limited constraint keeps the contact
physics of the grasp itself and is several times faster (docs/sim.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PALM_HALF = (0.012, 0.055, 0.012)
"""Palm half-extents (x, y, z), metres; fingers slide along the palm's y axis."""
FINGER_THICK = 0.006
"""Finger half-thickness along the closing (y) axis, metres."""
FINGER_HALF_WIDTH = 0.012
"""Finger half-width along x, metres (scaled by the extend condition)."""
FINGER_LENGTH = 0.05
"""Stock finger length below the palm, metres."""
MAX_OPENING = 0.045
"""Finger travel from the centre line, metres (85 mm jaw gap)."""


@dataclass(frozen=True)
class GripperGeometry:
    """Geometry knobs that conditions change."""

    extra_length_m: float = 0.0
    """Added finger length (extend_gripper)."""
    width_scale: float = 1.0
    """Finger width multiplier (extend_gripper)."""
    offset_x_m: float = 0.0
    """Lateral mount offset along cell +x (offset_gripper)."""
    pad_friction: float = 1.2
    """Lateral friction of the finger pads."""
    grip_force_n: float = 40.0
    """Closing force of each finger, newtons."""

    @property
    def finger_length(self) -> float:
        return FINGER_LENGTH + self.extra_length_m


class Gripper:
    """Handle on the gripper body in one pybullet client; created by :meth:`build`."""

    def __init__(self, p: Any, client: int, geometry: GripperGeometry) -> None:
        self.p = p
        self.client = client
        self.geometry = geometry
        self.body = -1
        self.constraint = -1

    def build(self, cmd: tuple[float, float, float]) -> None:
        """Create the body with its commanded frame at ``cmd`` and its driving constraint."""
        p, c, g = self.p, self.client, self.geometry
        pos = self._body_pos(cmd)
        fl = g.finger_length
        fw = FINGER_HALF_WIDTH * g.width_scale
        grey = [0.25, 0.25, 0.28, 1.0]
        dark = [0.12, 0.12, 0.14, 1.0]
        ox = g.offset_x_m
        # The body origin is the palm; the bracket back to the mount is visual only.
        shapes_c = [PALM_HALF]
        pos_c = [[0.0, 0.0, 0.0]]
        base_col = p.createCollisionShapeArray(
            [p.GEOM_BOX] * len(shapes_c),
            halfExtents=shapes_c,
            collisionFramePositions=pos_c,
            physicsClientId=c,
        )
        vis_shapes = [PALM_HALF]
        vis_pos = [[0.0, 0.0, 0.0]]
        vis_col = [grey]
        if abs(ox) > 1e-6:
            vis_shapes.append((abs(ox) / 2, 0.01, 0.008))
            vis_pos.append([-ox / 2, 0.0, 0.03])
            vis_shapes.append((0.015, 0.015, 0.015))
            vis_pos.append([-ox, 0.0, 0.03])
            vis_col += [dark, dark]
        base_vis = p.createVisualShapeArray(
            [p.GEOM_BOX] * len(vis_shapes),
            halfExtents=vis_shapes,
            visualFramePositions=vis_pos,
            rgbaColors=vis_col,
            physicsClientId=c,
        )
        fhalf = (fw, FINGER_THICK, fl / 2)
        f_col = p.createCollisionShape(p.GEOM_BOX, halfExtents=fhalf, physicsClientId=c)
        f_vis = p.createVisualShape(
            p.GEOM_BOX, halfExtents=fhalf, rgbaColor=dark, physicsClientId=c
        )
        z = -PALM_HALF[2] - fl / 2
        self.body = p.createMultiBody(
            baseMass=0.6,
            baseCollisionShapeIndex=base_col,
            baseVisualShapeIndex=base_vis,
            basePosition=pos,
            linkMasses=[0.05, 0.05],
            linkCollisionShapeIndices=[f_col, f_col],
            linkVisualShapeIndices=[f_vis, f_vis],
            linkPositions=[[0.0, 0.0, z], [0.0, 0.0, z]],
            linkOrientations=[[0, 0, 0, 1], [0, 0, 0, 1]],
            linkInertialFramePositions=[[0, 0, 0], [0, 0, 0]],
            linkInertialFrameOrientations=[[0, 0, 0, 1], [0, 0, 0, 1]],
            linkParentIndices=[0, 0],
            linkJointTypes=[p.JOINT_PRISMATIC, p.JOINT_PRISMATIC],
            linkJointAxis=[[0, 1, 0], [0, -1, 0]],
            physicsClientId=c,
        )
        for j in (0, 1):
            p.changeDynamics(
                self.body,
                j,
                lateralFriction=g.pad_friction,
                spinningFriction=0.002,
                frictionAnchor=1,
                jointLowerLimit=-0.005,
                jointUpperLimit=MAX_OPENING,
                physicsClientId=c,
            )
            p.resetJointState(self.body, j, MAX_OPENING, physicsClientId=c)
        p.changeDynamics(self.body, -1, linearDamping=0.0, angularDamping=0.0, physicsClientId=c)
        self.constraint = p.createConstraint(
            self.body, -1, -1, -1, p.JOINT_FIXED, [0, 0, 0], [0, 0, 0], pos, physicsClientId=c
        )

    def _body_pos(self, cmd: tuple[float, float, float]) -> tuple[float, float, float]:
        # The bracket sits above the wrist rotation, so the offset stays in the cell frame.
        return (cmd[0] + self.geometry.offset_x_m, cmd[1], cmd[2])

    def teleport(self, cmd: tuple[float, float, float], yaw: float) -> None:
        """Place the commanded frame at ``cmd`` with ``yaw`` instantly, fingers open."""
        p, c = self.p, self.client
        pos = self._body_pos(cmd)
        orn = p.getQuaternionFromEuler([0.0, 0.0, yaw])
        p.resetBasePositionAndOrientation(self.body, pos, orn, physicsClientId=c)
        p.resetBaseVelocity(self.body, [0, 0, 0], [0, 0, 0], physicsClientId=c)
        for j in (0, 1):
            p.resetJointState(self.body, j, MAX_OPENING, physicsClientId=c)
        self.drive(cmd, yaw)
        self.fingers(MAX_OPENING)

    def drive(self, cmd: tuple[float, float, float], yaw: float, force: float = 300.0) -> None:
        """Set the constraint target of the commanded frame (force-limited)."""
        orn = self.p.getQuaternionFromEuler([0.0, 0.0, yaw])
        self.p.changeConstraint(
            self.constraint, self._body_pos(cmd), orn, maxForce=force, physicsClientId=self.client
        )

    def fingers(self, opening: float, force: float | None = None) -> None:
        """Drive both fingers to ``opening`` metres from the centre line."""
        if force is None:
            force = self.geometry.grip_force_n
        self.p.setJointMotorControlArray(
            self.body,
            [0, 1],
            self.p.POSITION_CONTROL,
            targetPositions=[opening, opening],
            forces=[force, force],
            positionGains=[0.08, 0.08],
            physicsClientId=self.client,
        )

    def opening(self) -> float:
        """Current mean finger opening, metres."""
        s = self.p.getJointStates(self.body, [0, 1], physicsClientId=self.client)
        return float(s[0][0] + s[1][0]) / 2

    def tip_depth(self) -> float:
        """Distance from the commanded frame down to the finger tips, metres."""
        return PALM_HALF[2] + self.geometry.finger_length
