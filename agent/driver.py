"""The Driver protocol: what the agent needs from a robot (real or simulated).

The agent owns this contract; the drivers (``drivers/``) implement it and register
themselves as a :class:`DriverType` (see :mod:`agent.driver_types`), so no agent module
imports a driver.

A driver owns the hardware (or simulator). It is opened by ``start()`` (or a
``with`` block), never in its constructor. One grasp attempt is
``observe() -> execute(action)`` repeated ``spec.horizon`` times; the last
``execute`` returns a :class:`StepResult` with ``done=True`` and the
:class:`GraspOutcome`. A driver that cannot reach its robot raises
:class:`DriverUnavailable`; the caller stops actuating and retries later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

from agent.spec import Spec


class DriverUnavailable(Exception):
    """The robot cannot be reached (bridge down, link lost, robot refusing commands).

    Raised by ``observe``, ``execute``, ``shuffle``, ``reset`` or ``home``-like calls. It means
    no action was executed, or that the outcome of the action is unknown: either way the
    attempt must not be logged as a grasp. The driver reconnects by itself; the caller only
    retries later (with backoff) and reports the outage.
    """


@dataclass(frozen=True)
class Observation:
    """What the policy sees before a decision."""

    image: npt.NDArray[np.uint8]
    """uint8 image of ``spec.image_shape``."""
    step: int
    """Step within the grasp attempt, 0-based."""
    timestamp: float
    """Driver clock (seconds) when the image was captured."""


@dataclass(frozen=True)
class GraspOutcome:
    """How a grasp attempt ended and how the driver knew."""

    success: bool
    """An object was lifted and held."""
    sensed_by: str
    """How success was sensed, e.g. ``"sim_height"``, ``"gripper_width"``, ``"operator"``."""
    detail: dict[str, float] = field(default_factory=dict)
    """Driver-specific figures (lift height, held time, finger gap...)."""


@dataclass(frozen=True)
class StepResult:
    """Result of one ``execute``."""

    reward: float
    """1 on success at the end of an attempt, minus any per-step penalty."""
    done: bool
    """True when the grasp attempt is over."""
    outcome: GraspOutcome | None
    """Set when ``done``."""
    duration_s: float
    """Driver time the step took (sim time for the sim cell)."""


@runtime_checkable
class Driver(Protocol):
    """A grasping robot as the agent sees it."""

    @property
    def spec(self) -> Spec:
        """The observation/action spec this driver produces and accepts."""
        ...

    def start(self) -> None:
        """Open the hardware or simulator. Idempotent."""
        ...

    def observe(self) -> Observation:
        """Capture the image for the next decision.

        Raises RuntimeError if not started, DriverUnavailable if the robot cannot be reached.
        """
        ...

    def execute(self, action: npt.NDArray[np.float32]) -> StepResult:
        """Carry out one normalised action.

        Raises ValueError on a bad action (nothing moved), DriverUnavailable when the robot
        cannot be reached or the outcome is unknown.
        """
        ...

    def shuffle(self) -> None:
        """Stir the bin (between evaluation trials); keeps the same objects."""
        ...

    def reset(self, seed: int | None = None) -> None:
        """Start a fresh bin (new objects); ``seed`` makes it reproducible."""
        ...

    def close(self) -> None:
        """Release the hardware. Idempotent; safe after a failed start."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class StartClose:
    """``with`` support for a class with ``start()`` and ``close()``: enter starts, exit closes.

    Drivers and the camera inherit it instead of repeating the two methods.
    """

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class DriverType:
    """One kind of driver as the agent finds it: what a driver package registers under the
    entry-point group :data:`agent.driver_types.ENTRY_POINT_GROUP` (name = the ``type`` key).

    The agent builds ``config`` from the ``[driver]`` table (every key but ``type``) with the
    config loader, so unknown keys and wrong types are named like any other key; ``check``
    then does the checks across fields and ``make`` constructs the driver (not started).
    """

    config: type[Any]
    """The driver's own settings: a frozen dataclass, one field per key of ``[driver]``."""
    make: Callable[[Any], Driver]
    """Construct (not start) the driver from an instance of ``config``; ValueError names a key."""
    check: Callable[[Any, str], None] = lambda cfg, prefix: None
    """Checks across fields of a built ``config``; ValueError naming the key (``prefix`` + key)."""
    summary: str = ""
    """One line for the help (``robot-agent config``)."""
