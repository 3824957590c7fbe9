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

import torch
from torch import Tensor

from agent.spec import Spec
from trainer.qnet import PixelMapping


def allowed_transforms(pixels: PixelMapping) -> tuple[int, ...]:
    """Transforms that are symmetries of the image mapping (identity always)."""
    if pixels.is_centred_square:
        return tuple(range(8))
    if pixels.centre_x_m == 0.0 and pixels.centre_y_m == 0.0:
        return (0, 2, 4, 6)
    return (0,)


def transform_images(images: Tensor, k: int) -> Tensor:
    """Apply transform ``k`` to images [B, H, W, C] (rows top = +y, columns = +x)."""
    if k >= 4:
        images = torch.flip(images, dims=(2,))
    return torch.rot90(images, k % 4, dims=(1, 2)) if k % 4 else images


def transform_actions(actions: Tensor, k: int, spec: Spec) -> Tensor:
    """Apply transform ``k`` to normalised actions [..., 3]; yaw wrapped modulo pi."""
    x = actions[..., 0] * spec.workspace_x_m
    y = actions[..., 1] * spec.workspace_y_m
    yaw = actions[..., 2] * spec.yaw_range_rad
    if k >= 4:
        x, yaw = -x, -yaw
    for _ in range(k % 4):
        x, y, yaw = -y, x, yaw + math.pi / 2
    yaw = torch.remainder(yaw + math.pi / 2, math.pi) - math.pi / 2
    out = torch.stack(
        [x / spec.workspace_x_m, y / spec.workspace_y_m, yaw / spec.yaw_range_rad], dim=-1
    )
    return out.clamp(-1.0, 1.0)


def quarter_turn_ok(actions: Tensor, spec: Spec) -> Tensor:
    """[B] bool: a quarter turn keeps each action [B, 3] inside the box."""
    x = (actions[:, 0] * spec.workspace_x_m).abs()
    y = (actions[:, 1] * spec.workspace_y_m).abs()
    eps = 1e-6
    return (x <= spec.workspace_y_m + eps) & (y <= spec.workspace_x_m + eps)


def draw_transforms(
    actions: Tensor, spec: Spec, allowed: tuple[int, ...], generator: torch.Generator
) -> Tensor:
    """One transform id per sample, uniform over ``allowed`` and valid for its action."""
    table = torch.tensor(allowed, dtype=torch.long)
    ks = table[torch.randint(len(allowed), (actions.shape[0],), generator=generator)]
    even = table[table % 2 == 0]
    bad = (ks % 2 == 1) & ~quarter_turn_ok(actions, spec)
    if bad.any():
        ks[bad] = even[torch.randint(len(even), (int(bad.sum()),), generator=generator)]
    return ks


def augment(
    images: Tensor, next_images: Tensor, actions: Tensor, ks: Tensor, spec: Spec
) -> tuple[Tensor, Tensor, Tensor]:
    """Apply per-sample transforms ``ks`` [B] to states, next states and actions."""
    out_i, out_n, out_a = images.clone(), next_images.clone(), actions.clone()
    for k in torch.unique(ks).tolist():
        if k == 0:
            continue
        idx = torch.nonzero(ks == k).squeeze(1)
        out_i[idx] = transform_images(images[idx], k)
        out_n[idx] = transform_images(next_images[idx], k)
        out_a[idx] = transform_actions(actions[idx], k, spec)
    return out_i, out_n, out_a
