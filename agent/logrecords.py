"""The rows the control thread writes to the grasp log, and how their images are stored.

Pure data and codecs (no connection): :class:`GraspRecord` and :class:`TransitionRecord`
as the driver's grasp produced them, the OpenCV image codec of the ``transitions`` table,
and the test for a full disk (``SQLITE_FULL``) that the writers share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class TransitionRecord:
    """One step of a grasp attempt as logged."""

    step: int
    """0-based step within the attempt."""
    image: npt.NDArray[np.uint8] | None
    """The RGB image the decision saw (None if images are not stored)."""
    action: Sequence[float]
    """The normalised action taken."""
    reward: float
    """Reward of the step."""
    done: bool
    """Last step of the attempt."""


@dataclass(frozen=True)
class GraspRecord:
    """One grasp attempt as logged."""

    t_start: float
    """Wall-clock start (unix seconds)."""
    t_end: float
    """Wall-clock end."""
    condition_id: int
    """Condition the grasp ran in."""
    policy_id: str
    """Policy that chose the action."""
    mode: str
    """"serve", "explore" or "eval"."""
    success: bool
    """Object lifted and held."""
    reward: float
    """Sum of step rewards."""
    q: float
    """Q of the chosen action (of the first decision)."""
    decide_ms: float
    """Total decision time."""
    execute_ms: float
    """Total time in driver.execute."""
    sensed_by: str
    """How success was sensed."""
    detail: dict[str, float]
    """Driver figures."""
    transitions: tuple[TransitionRecord, ...]
    """Per-step records."""


def encode_image(image: npt.NDArray[np.uint8], fmt: str) -> bytes:
    """Encode an RGB image with OpenCV (stored as a normal, viewable PNG/JPEG)."""
    ok, buf = cv2.imencode("." + fmt, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return bytes(buf.tobytes())


def decode_image(data: bytes) -> npt.NDArray[np.uint8]:
    """Decode :func:`encode_image` output back to an RGB uint8 array."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("OpenCV could not decode an image")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
