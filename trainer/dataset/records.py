"""The episode store's records (what the agent logs, what training reads) and its format."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT = 1
INDEX_FILE = "index.json"
CHUNK_MANIFEST = "chunk.json"
ARRAYS = ("frames", "obs", "next_obs", "action", "reward", "done", "episode", "step")

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Step:
    """One decision of a grasp attempt."""

    image: U8
    """Observation before the decision, uint8 [H, W, 3]."""
    action: F32
    """Normalised action taken, float32 [A]."""
    reward: float
    """Reward received for this step."""
    done: bool
    """True if the attempt ended with this step."""


@dataclass(frozen=True)
class Episode:
    """One grasp attempt as logged by the agent."""

    steps: tuple[Step, ...]
    """The decisions in order (horizon 1: exactly one)."""
    success: bool
    """Whether the grasp succeeded."""
    condition: str
    """Name of the condition the grasp ran under."""
    policy_id: str
    """Bundle id of the policy that chose the actions."""
    timestamp: float
    """Wall-clock time of the attempt (seconds since the epoch)."""
    final_image: U8 | None = None
    """Observation after the last step when the attempt was cut off without ``done``."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Any other JSON-ready fields the agent logged (grasp id, mode, Q...)."""


@dataclass(frozen=True)
class Batch:
    """A batch of transitions (numpy, ready to hand to torch)."""

    images: U8
    """States [B, H, W, 3]."""
    actions: F32
    """Actions [B, A]."""
    rewards: F32
    """Rewards [B]."""
    dones: npt.NDArray[np.bool_]
    """No bootstrapping where True [B]: the episode ended, or no next state was logged."""
    next_images: U8
    """Next states [B, H, W, 3]; zeros where there is none."""

    def __len__(self) -> int:
        return int(self.rewards.shape[0])


def concat_batches(parts: Sequence[Batch]) -> Batch:
    """Concatenate batches along the first axis."""
    return Batch(
        images=np.concatenate([p.images for p in parts]),
        actions=np.concatenate([p.actions for p in parts]),
        rewards=np.concatenate([p.rewards for p in parts]),
        dones=np.concatenate([p.dones for p in parts]),
        next_images=np.concatenate([p.next_images for p in parts]),
    )


def read_index(root: Path) -> dict[str, Any]:
    """The dataset's index; raises ValueError when it is unreadable or of another format."""
    try:
        index = json.loads((root / INDEX_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root}: unreadable {INDEX_FILE}: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{root}: not a format-{FORMAT} episode dataset")
    return index
