"""The six conditions of the paper's Table I, as typed severity parameters (pure, no pybullet).

Each condition is a frozen dataclass whose fields are its severity knobs;
``make_condition(name, params)`` builds one from a name and a dict of
overrides and names the bad key (and the allowed ones) on error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Baseline:
    """Training conditions: plain grey tray, indoor light, opaque objects, stock gripper."""

    name = "baseline"


@dataclass(frozen=True)
class Checkerboard:
    """Black/white checker glued to the tray floor (background challenge)."""

    name = "checkerboard"
    square_cm: float = 2.54
    """Edge of one checker square in centimetres (the paper used 1 inch)."""
    contrast: float = 1.0
    """0 = plain floor, 1 = full black/white."""


@dataclass(frozen=True)
class HarshLighting:
    """A strong low directional light: bright spot and hard light/dark contrast."""

    name = "harsh_lighting"
    intensity: float = 1.0
    """0 = indoor light, 1 = the full halogen lamp; scales glare, contrast and shadow."""
    spot_x: float = 0.05
    """Bright spot centre, metres (cell frame)."""
    spot_y: float = -0.04
    """Bright spot centre, metres (cell frame)."""
    spot_radius_m: float = 0.09
    """Radius of the bright spot, metres."""
    light_azimuth_deg: float = 30.0
    """Direction the lamp shines from, degrees about the vertical."""
    light_elevation_deg: float = 20.0
    """Lamp elevation above the workspace plane; low = long shadows."""


@dataclass(frozen=True)
class ExtendGripper:
    """Fingers lengthened (and narrowed) in the geometry."""

    name = "extend_gripper"
    extra_length_cm: float = 1.0
    """Added finger length in centimetres (the paper: 1 cm)."""
    width_scale: float = 0.5
    """Finger width multiplier (the paper's extension is much narrower than the stock finger)."""
    pad_friction: float = 0.45
    """Friction of the bare extension tips (the stock rubber pads: 1.2); less compliant grip."""
    grip_force_n: float = 5.0
    """Squeeze each finger still transmits through the flexible extension (stock: 40 N)."""


@dataclass(frozen=True)
class OffsetGripper:
    """The gripper mounted on a bracket, laterally offset from the commanded frame."""

    name = "offset_gripper"
    offset_cm: float = 10.0
    """Lateral offset along the cell's +x axis, centimetres (the paper: 10 cm)."""


@dataclass(frozen=True)
class Transparent:
    """Objects mostly see-through in the image (alpha-composited over the empty bin)."""

    name = "transparent"
    opacity: float = 0.10
    """Fraction of the object's own colour left in the image (0 = invisible)."""
    edge_highlight: float = 0.35
    """Strength of the specular rim that real clear plastic shows."""


Condition = Baseline | Checkerboard | HarshLighting | ExtendGripper | OffsetGripper | Transparent

CONDITIONS: dict[str, type[Condition]] = {
    c.name: c
    for c in (Baseline, Checkerboard, HarshLighting, ExtendGripper, OffsetGripper, Transparent)
}
"""Condition classes by name, in the paper's order (baseline first)."""

CONDITION_NAMES: tuple[str, ...] = tuple(CONDITIONS)


def make_condition(name: str, params: dict[str, Any] | None = None) -> Condition:
    """Build a condition by name with severity overrides; ValueError names the bad key."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}; allowed: {', '.join(CONDITION_NAMES)}")
    cls = CONDITIONS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    params = dict(params or {})
    for key, value in params.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "(none)"
            raise ValueError(f"condition {name!r} has no parameter {key!r}; allowed: {allowed}")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"condition {name!r} parameter {key!r} must be a number")
        params[key] = float(value)
    return cls(**params)


def condition_params(cond: Condition) -> dict[str, float]:
    """The severity parameters of a condition as a plain dict."""
    return {f.name: float(getattr(cond, f.name)) for f in dataclasses.fields(cond)}


def parse_param_args(items: list[str]) -> dict[str, float]:
    """Parse CLI ``key=value`` strings into a params dict; ValueError on a malformed item."""
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter {item!r} must look like key=value")
        try:
            out[key.strip()] = float(value)
        except ValueError as exc:
            raise ValueError(f"parameter {key!r}: {value!r} is not a number") from exc
    return out
