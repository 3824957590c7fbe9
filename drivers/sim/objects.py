"""The fixed train/test split of pybullet_data's 1000 ``random_urdfs`` objects."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

N_OBJECTS = 1000
N_TRAIN = 900
"""Objects 000-899 are for training, 900-999 are held out for testing."""

Split = Literal["train", "test", "all"]


def object_ids(split: Split) -> range:
    """Indices of the objects in a split."""
    if split == "train":
        return range(0, N_TRAIN)
    if split == "test":
        return range(N_TRAIN, N_OBJECTS)
    if split == "all":
        return range(0, N_OBJECTS)
    raise ValueError(f"unknown split {split!r}; allowed: train, test, all")


def object_urdf(data_root: Path, index: int) -> Path:
    """Path of object ``index`` under pybullet_data."""
    if not 0 <= index < N_OBJECTS:
        raise ValueError(f"object index {index} outside 0..{N_OBJECTS - 1}")
    return data_root / "random_urdfs" / f"{index:03d}" / f"{index:03d}.urdf"
