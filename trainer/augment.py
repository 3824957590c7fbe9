"""8-fold flip/rotation augmentation of (image, action) pairs that keeps them consistent.

Transform ``k`` in 0..7 is: mirror the columns (world x -> -x) if ``k >= 4``,
then rotate ``k % 4`` times by 90 degrees counter-clockwise (world
``(x, y) -> (-y, x)``). The image must show the cell top-down with columns
along +x and row 0 at +y, centred on the workspace origin (see
``trainer.qnet.PixelMapping``); rotations also need a square image extent.
Yaw is mapped with the scene (mirror: yaw -> -yaw; rotation: yaw + 90 degrees)
and wrapped modulo 180 degrees, which assumes a gripper symmetric under a
half turn (not true for an offset gripper: turn augmentation off there).

The workspace is not square (x +-0.20 m, y +-0.15 m), so a quarter turn of a
grasp with ``|x| > 0.15 m`` would leave the action box: such samples get one
of the four transforms without a quarter turn instead.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from agent.spec import Spec
from trainer.qnet import PixelMapping

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


def allowed_transforms(pixels: PixelMapping) -> tuple[int, ...]:
    """Transforms that are symmetries of the image mapping (identity always)."""
    if pixels.is_centred_square:
        return tuple(range(8))
    if pixels.centre_x_m == 0.0 and pixels.centre_y_m == 0.0:
        return (0, 2, 4, 6)
    return (0,)


def transform_images(images: U8, k: int) -> U8:
    """Apply transform ``k`` to images [B, H, W, C] (rows top = +y, columns = +x); a view."""
    if k >= 4:
        images = images[:, :, ::-1]
    return np.rot90(images, k % 4, axes=(1, 2)) if k % 4 else images


def transform_actions(actions: F32, k: int, spec: Spec) -> F32:
    """Apply transform ``k`` to normalised actions [..., 3]; yaw wrapped modulo pi."""
    a = np.asarray(actions, dtype=np.float64)
    x = a[..., 0] * spec.workspace_x_m
    y = a[..., 1] * spec.workspace_y_m
    yaw = a[..., 2] * spec.yaw_range_rad
    if k >= 4:
        x, yaw = -x, -yaw
    for _ in range(k % 4):
        x, y, yaw = -y, x, yaw + math.pi / 2
    yaw = np.mod(yaw + math.pi / 2, math.pi) - math.pi / 2
    out = np.stack([x / spec.workspace_x_m, y / spec.workspace_y_m, yaw / spec.yaw_range_rad], -1)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def quarter_turn_ok(actions: F32, spec: Spec) -> npt.NDArray[np.bool_]:
    """[B] bool: a quarter turn keeps each action [B, 3] inside the box."""
    x = np.abs(actions[:, 0] * spec.workspace_x_m)
    y = np.abs(actions[:, 1] * spec.workspace_y_m)
    eps = 1e-6
    ok: npt.NDArray[np.bool_] = (x <= spec.workspace_y_m + eps) & (y <= spec.workspace_x_m + eps)
    return ok


def draw_transforms(
    actions: F32, spec: Spec, allowed: tuple[int, ...], rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """One transform id per sample, uniform over ``allowed`` and valid for its action."""
    table = np.asarray(allowed, dtype=np.int64)
    ks: npt.NDArray[np.int64] = table[rng.integers(0, len(table), size=actions.shape[0])]
    even = table[table % 2 == 0]
    bad = (ks % 2 == 1) & ~quarter_turn_ok(actions, spec)
    if bad.any():
        ks[bad] = even[rng.integers(0, len(even), size=int(bad.sum()))]
    return ks


def augment(
    images: U8,
    next_images: U8,
    actions: F32,
    ks: npt.NDArray[np.int64],
    spec: Spec,
    has_next: npt.NDArray[np.bool_] | None = None,
) -> tuple[U8, U8, F32]:
    """Apply per-sample transforms ``ks`` [B] to states, next states and actions (copies).

    Next states are transformed only where ``has_next`` (default: everywhere);
    elsewhere they are passed through (blank images need no transform).
    """
    out_i, out_a = images.copy(), actions.copy()
    live = np.ones(len(ks), dtype=bool) if has_next is None else has_next
    out_n = next_images.copy() if live.any() else next_images
    for k in np.unique(ks).tolist():
        if k == 0:
            continue
        sel = ks == k
        idx = np.flatnonzero(sel)
        out_i[idx] = transform_images(images[idx], k)
        out_a[idx] = transform_actions(actions[idx], k, spec)
        nidx = np.flatnonzero(sel & live)
        if len(nidx):
            out_n[nidx] = transform_images(next_images[nidx], k)
    return out_i, out_n, out_a
