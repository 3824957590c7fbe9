"""Image-space parts of the conditions (pure numpy): checker floor, glare, transparency."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FLOOR_HALF = 0.19
"""Half-width of the tray's flat floor, metres: the checker covers only the floor."""


def checker_floor(
    rgb: npt.NDArray[np.uint8],
    floor_mask: npt.NDArray[np.bool_],
    floor_x: npt.NDArray[np.float64],
    floor_y: npt.NDArray[np.float64],
    square_m: float,
    contrast: float,
    shade_ref: float,
) -> npt.NDArray[np.uint8]:
    """Paint a black/white checker on the floor pixels, keeping the renderer's shading.

    ``shade_ref`` is the plain floor's brightness under neutral light; the
    checker is multiplied by each pixel's brightness relative to it so shadows
    and the lamp still show on the pattern.
    """
    on_floor = floor_mask & (np.abs(floor_x) < FLOOR_HALF) & (np.abs(floor_y) < FLOOR_HALF)
    parity = (np.floor(floor_x / square_m) + np.floor(floor_y / square_m)) % 2
    checker = np.where(parity > 0, 235.0, 20.0)
    lum = rgb.astype(np.float32).mean(axis=2) / max(shade_ref, 1.0)
    base = rgb.astype(np.float32)
    painted = (checker * lum)[..., None] * np.ones(3, np.float32)
    mixed = base + contrast * (painted - base)
    out: npt.NDArray[np.float32] = np.where(on_floor[..., None], mixed, base)
    return np.clip(out, 0, 255).astype(np.uint8)


def glare(
    rgb: npt.NDArray[np.uint8],
    floor_x: npt.NDArray[np.float64],
    floor_y: npt.NDArray[np.float64],
    spot_x: float,
    spot_y: float,
    radius: float,
    intensity: float,
) -> npt.NDArray[np.uint8]:
    """A halogen lamp's bright spot: a saturating additive Gaussian plus contrast stretch."""
    d2 = (floor_x - spot_x) ** 2 + (floor_y - spot_y) ** 2
    spot = np.exp(-d2 / (2.0 * radius**2)).astype(np.float32)
    img: npt.NDArray[np.float32] = rgb.astype(np.float32)
    mean = float(img.mean())
    img = mean + (img - mean) * (1.0 + 0.8 * intensity)
    img = img * (1.0 + 1.5 * intensity * spot[..., None]) + 255.0 * intensity * spot[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def see_through(
    rgb: npt.NDArray[np.uint8],
    background: npt.NDArray[np.uint8],
    object_mask: npt.NDArray[np.bool_],
    opacity: float,
    edge_highlight: float,
) -> npt.NDArray[np.uint8]:
    """Alpha-composite object pixels over the empty bin, plus a faint bright rim."""
    img = rgb.astype(np.float32)
    bg = background.astype(np.float32)
    comp = opacity * img + (1.0 - opacity) * bg
    m = object_mask.astype(np.float32)
    # rim = object pixels with a non-object 4-neighbour
    interior = m.copy()
    interior[1:, :] *= m[:-1, :]
    interior[:-1, :] *= m[1:, :]
    interior[:, 1:] *= m[:, :-1]
    interior[:, :-1] *= m[:, 1:]
    rim = (m - interior)[..., None]
    comp = comp + edge_highlight * rim * (255.0 - comp)
    out = np.where(object_mask[..., None], comp, img)
    return np.clip(out, 0, 255).astype(np.uint8)
