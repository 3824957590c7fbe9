"""A real camera through OpenCV ``VideoCapture``: frames cropped and resized to the spec.

The source is a device index (``"0"``), a video file or a stream URL. Two ways
to read it:

- ``latest`` (live cameras and streams): a grabber thread reads continuously and
  keeps only the newest frame, so ``read()`` returns what the camera sees now, not
  a frame that waited in a driver buffer; frames replaced before anyone read them
  are counted as dropped.
- ``sequential`` (files): ``read()`` returns every frame in order.

``read()`` waits at most ``read_timeout_s`` and raises :class:`CameraError`, with a
message saying which camera and what happened, when the source is missing or stops
delivering. Nothing is opened before ``start()``; ``close()`` is idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.driver import StartClose
from agent.spec import DEFAULT_SPEC, Spec

log = logging.getLogger(__name__)


class CameraError(RuntimeError):
    """The camera is missing, misconfigured or stopped delivering frames."""


@dataclass(frozen=True)
class CameraConfig:
    """Which camera, which part of its image, and how long to wait for a frame."""

    source: str = ""
    """Device index ("0" = /dev/video0), video file path, or stream URL; empty = no camera."""
    crop: tuple[int, ...] = ()
    """(x, y, width, height) in source pixels; empty = the largest centred square."""
    mode: Literal["auto", "latest", "sequential"] = "auto"
    """auto: sequential for files, latest (newest frame, grabber thread) otherwise."""
    read_timeout_s: float = 1.0
    """Longest wait for a new frame before the camera counts as stopped."""
    open_timeout_s: float = 5.0
    """Longest wait to open a stream URL."""
    pace_fps: float = 0.0
    """Replay a file at this rate in latest mode (0 = its own frame rate)."""


@dataclass(frozen=True)
class Frame:
    """One processed frame."""

    image: npt.NDArray[np.uint8]
    """RGB uint8 image of the spec's shape."""
    timestamp: float
    """Wall clock (time.time()) when the frame was grabbed."""
    index: int
    """Frames grabbed from the source so far (this one included), 1-based."""
    dropped: int
    """Frames grabbed but never returned by read(), so far."""
    source_ms: float
    """The source's own position or timestamp of the frame, milliseconds (0 when unknown)."""


def check_config(cfg: CameraConfig, prefix: str = "") -> None:
    """ValueError naming the first bad key (``prefix`` + key); opens nothing."""
    if cfg.crop and (len(cfg.crop) != 4 or min(cfg.crop) < 0):
        raise ValueError(f"{prefix}crop = {cfg.crop!r}: must be (x, y, width, height) >= 0")
    if cfg.crop and min(cfg.crop[2:]) == 0:
        raise ValueError(f"{prefix}crop = {cfg.crop!r}: width and height must be > 0")
    if cfg.read_timeout_s <= 0:
        raise ValueError(f"{prefix}read_timeout_s must be > 0")


def is_device(source: str) -> bool:
    """A bare integer names a capture device."""
    return source.strip().isdigit()


def is_url(source: str) -> bool:
    return "://" in source


class Camera(StartClose):
    """An OpenCV camera delivering spec-sized RGB frames with timestamps and drop counts."""

    def __init__(self, cfg: CameraConfig | None = None, spec: Spec = DEFAULT_SPEC) -> None:
        self.cfg = cfg or CameraConfig()
        check_config(self.cfg)
        self.spec = spec
        self._cv: Any = None  # the cv2 module, imported by start(): configs load without it
        self._cap: Any = None
        self._latest = False
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._raw: tuple[npt.NDArray[np.uint8], float, int, float] | None = None
        self._grabbed = 0
        self._delivered_index = 0
        self._dropped = 0
        self._failure = ""

    @property
    def name(self) -> str:
        return f"camera {self.cfg.source!r}"

    @property
    def dropped(self) -> int:
        """Frames grabbed but never returned, so far."""
        return self._dropped

    def start(self) -> None:
        """Open the source (and start the grabber in latest mode); CameraError if missing."""
        if self._cap is not None:
            return
        import cv2

        self._cv = cv2
        src = self.cfg.source
        if not src:
            raise CameraError("no camera source configured (camera.source is empty)")
        if not is_device(src) and not is_url(src) and not Path(src).exists():
            raise CameraError(f"{self.name}: no such file")
        if is_device(src):
            cap = self._cv.VideoCapture(int(src))
        else:
            ms = int(self.cfg.open_timeout_s * 1000)
            params = [self._cv.CAP_PROP_OPEN_TIMEOUT_MSEC, ms]
            params += [self._cv.CAP_PROP_READ_TIMEOUT_MSEC, int(self.cfg.read_timeout_s * 1000)]
            cap = self._cv.VideoCapture(src, self._cv.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            hint = (
                " (no such device, busy, or no permission: is the user in group 'video'?)"
                if is_device(src)
                else " (unreachable, or a format OpenCV cannot decode)"
            )
            raise CameraError(f"{self.name} could not be opened{hint}")
        self._cap = cap
        mode = self.cfg.mode
        self._latest = mode == "latest" or (mode == "auto" and (is_device(src) or is_url(src)))
        self._stop.clear()
        self._failure = ""
        if self._latest:
            self._thread = threading.Thread(target=self._grab_loop, name="camera", daemon=True)
            self._thread.start()

    def read(self) -> Frame:
        """The next frame (latest mode: the newest one not yet returned), cropped and resized."""
        if self._cap is None:
            raise RuntimeError(f"{self.name} not started: call start() or use it as a context")
        if self._latest:
            bgr, ts, index, pos, dropped = self._wait_latest()
        else:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                raise CameraError(
                    f"{self.name} stopped delivering after {self._grabbed} frames "
                    "(end of file or device lost)"
                )
            self._grabbed += 1
            ts, index, dropped = time.time(), self._grabbed, 0
            pos = float(self._cap.get(self._cv.CAP_PROP_POS_MSEC) or 0.0)
        return Frame(self._process(bgr), ts, index, dropped, pos)

    def close(self) -> None:
        """Stop the grabber and release the device. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, 2 * self.cfg.read_timeout_s))
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    # -- internals ---------------------------------------------------------------------------
    def _wait_latest(self) -> tuple[npt.NDArray[np.uint8], float, int, float, int]:
        deadline = time.monotonic() + self.cfg.read_timeout_s
        with self._cond:
            while self._raw is None or self._raw[2] <= self._delivered_index:
                left = deadline - time.monotonic()
                if self._failure and (self._raw is None or self._raw[2] <= self._delivered_index):
                    raise CameraError(f"{self.name} stopped delivering: {self._failure}")
                if left <= 0:
                    raise CameraError(
                        f"{self.name} delivered no frame for {self.cfg.read_timeout_s} s "
                        f"({self._grabbed} frames so far, {self._dropped} dropped)"
                    )
                self._cond.wait(left)
            bgr, ts, index, pos = self._raw
            self._delivered_index = index  # under the lock: the grabber counts drops by it
            return bgr, ts, index, pos, self._dropped

    def _grab_loop(self) -> None:
        cap = self._cap
        pace = self.cfg.pace_fps
        if not pace and not is_device(self.cfg.source) and not is_url(self.cfg.source):
            pace = float(cap.get(self._cv.CAP_PROP_FPS) or 30.0)  # a file replayed as a live camera
        period = 1.0 / pace if pace > 0 else 0.0
        next_t = time.monotonic()
        while not self._stop.is_set():
            ok, bgr = cap.read()
            if not ok or bgr is None:
                with self._cond:
                    self._failure = f"no frame after {self._grabbed} (end of stream or device lost)"
                    self._cond.notify_all()
                return
            ts = time.time()
            pos = float(cap.get(self._cv.CAP_PROP_POS_MSEC) or 0.0)
            with self._cond:
                if self._raw is not None and self._raw[2] > self._delivered_index:
                    self._dropped += 1  # the previous frame was never read
                self._grabbed += 1
                self._raw = (bgr, ts, self._grabbed, pos)
                self._cond.notify_all()
            if period:
                next_t += period
                self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _process(self, bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        h, w = bgr.shape[:2]
        if self.cfg.crop:
            x, y, cw, ch = self.cfg.crop
            if x + cw > w or y + ch > h:
                raise CameraError(
                    f"{self.name}: crop {self.cfg.crop} lies outside the {w}x{h} frame"
                )
        else:
            side = min(w, h)
            x, y, cw, ch = (w - side) // 2, (h - side) // 2, side, side
        roi = bgr[y : y + ch, x : x + cw]
        size = (self.spec.image_width, self.spec.image_height)
        small = self._cv.resize(roi, size, interpolation=self._cv.INTER_AREA)
        if small.ndim == 2:
            small = self._cv.cvtColor(small, self._cv.COLOR_GRAY2BGR)
        rgb: npt.NDArray[np.uint8] = np.ascontiguousarray(small[..., ::-1], dtype=np.uint8)
        self.spec.check_image(rgb)
        return rgb
