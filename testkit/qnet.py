"""A tiny Q-network for trainer tests (torch): small enough to train in seconds on a CPU."""

from __future__ import annotations

from trainer.qnet import QNetConfig

TINY = QNetConfig(
    trunk_channels=(8, 8, 8),
    trunk_strides=(2, 2, 2),
    merge_channels=8,
    action_hidden=8,
    head_hidden=8,
)
"""Three 8-channel trunk layers at stride 2 and 8-unit heads."""
