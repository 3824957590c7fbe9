"""The OpenCV camera adapter on a video file the test writes (crop, resize, timestamps, drops)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.camera import Camera, CameraConfig, CameraError

pytestmark = pytest.mark.timeout(30)

H, W, N = 120, 160, 30


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames at 30 fps: left half red, right half blue, a grey level that rises per frame."""
    path = tmp_path_factory.mktemp("cam") / "bin.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (W, H))
    assert out.isOpened()
    for i in range(N):
        f = np.zeros((H, W, 3), np.uint8)
        f[:, : W // 2] = (0, 0, 255)  # BGR red
        f[:, W // 2 :] = (255, 0, 0)  # BGR blue
        f[: H // 6, :] = 8 * i  # a grey band at the top encodes the frame number
        out.write(f)
    out.release()
    return path


def test_crop_and_resize_to_the_spec_in_rgb(video: Path) -> None:
    with Camera(CameraConfig(source=str(video), crop=(W // 2, 40, 60, 60))) as cam:
        frame = cam.read()
    assert frame.image.shape == (64, 64, 3) and frame.image.dtype == np.uint8
    r, g, b = frame.image.reshape(-1, 3).mean(axis=0)
    assert b > 200 and r < 40 and g < 40  # only the blue half, delivered as RGB


def test_default_crop_is_the_centred_square(video: Path) -> None:
    with Camera(CameraConfig(source=str(video))) as cam:
        img = cam.read().image
    left, right = img[32:, :28].reshape(-1, 3).mean(0), img[32:, 36:].reshape(-1, 3).mean(0)
    assert left[0] > 200 and left[2] < 40  # red on the left
    assert right[2] > 200 and right[0] < 40  # blue on the right


def test_sequential_frames_carry_timestamps_and_then_stop(video: Path) -> None:
    t0 = time.time()
    with Camera(CameraConfig(source=str(video))) as cam:
        frames = [cam.read() for _ in range(N)]
        with pytest.raises(CameraError, match=f"stopped delivering after {N} frames"):
            cam.read()
    ts = [f.timestamp for f in frames]
    assert t0 <= ts[0] and ts == sorted(ts) and ts[-1] <= time.time()
    assert [f.index for f in frames] == list(range(1, N + 1))
    pos = [f.source_ms for f in frames]
    assert pos == sorted(pos) and pos[-1] > pos[0]
    assert all(f.dropped == 0 for f in frames)
    grey = [int(f.image[:4].mean()) for f in frames]
    assert grey[-1] > grey[0] + 100  # the frames really advance


def test_latest_mode_counts_dropped_frames_and_reports_the_end(video: Path) -> None:
    cfg = CameraConfig(source=str(video), mode="latest", pace_fps=200.0, read_timeout_s=0.5)
    got = []
    with Camera(cfg) as cam:
        with pytest.raises(CameraError, match="stopped delivering"):
            while True:
                got.append(cam.read())
                time.sleep(0.03)  # slower than the source: frames are replaced unread
        assert cam.dropped > 0
    idx = [f.index for f in got]
    assert idx == sorted(set(idx)) and len(idx) < N
    assert got[-1].dropped + len(got) <= N
    assert got[-1].dropped == idx[-1] - len(idx)  # every gap is a counted drop


def test_missing_device_is_a_clear_error() -> None:
    cam = Camera(CameraConfig(source="57"))
    with pytest.raises(CameraError, match=r"camera '57' could not be opened \(no such device"):
        cam.start()
    cam.close()


def test_missing_file_is_a_clear_error_and_the_constructor_does_no_io(tmp_path: Path) -> None:
    cam = Camera(CameraConfig(source=str(tmp_path / "none.avi")))  # no I/O here
    with pytest.raises(RuntimeError, match="not started"):
        cam.read()
    with pytest.raises(CameraError, match="no such file"):
        cam.start()


def test_crop_outside_the_frame_names_it(video: Path) -> None:
    with (
        Camera(CameraConfig(source=str(video), crop=(100, 0, 100, 100))) as cam,
        pytest.raises(CameraError, match=r"crop \(100, 0, 100, 100\) lies outside the 160x120"),
    ):
        cam.read()
    with pytest.raises(ValueError, match="crop"):
        Camera(CameraConfig(crop=(1, 2, 3)))


def test_close_is_idempotent(video: Path) -> None:
    cam = Camera(CameraConfig(source=str(video), mode="latest"))
    cam.start()
    cam.read()
    cam.close()
    cam.close()
    with pytest.raises(RuntimeError):
        cam.read()
