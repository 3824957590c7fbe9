"""One retry-delay rule: exponential backoff with jitter (pure; the caller sleeps).

The first delay is ``min_s``, each next one doubles up to ``max_s``; every delay is scaled by
a random factor in ``[1 - jitter, 1 + jitter]`` so that many clients that lost the same peer do
not retry in step. :meth:`Backoff.reset` after a success starts over at ``min_s``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``min_s, 2 min_s, 4 min_s, ... <= max_s``, each jittered by +-``jitter``."""

    min_s: float
    """First delay, seconds (> 0)."""
    max_s: float
    """Cap on the delay before jitter, seconds (>= min_s)."""
    jitter: float = 0.0
    """Relative spread of each delay, in [0, 1): 0.2 draws from [0.8 d, 1.2 d]."""
    rng: random.Random = field(default_factory=random.Random, repr=False)
    """Source of the jitter (seed it for a reproducible sequence)."""
    failures: int = 0
    """Delays handed out since the last reset."""

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"backoff: need 0 < min_s <= max_s, got {self.min_s}, {self.max_s}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff: jitter must be in [0, 1), got {self.jitter}")

    @property
    def base_s(self) -> float:
        """The next delay before jitter."""
        return min(self.max_s, self.min_s * 2.0 ** min(self.failures, 64))

    def next(self) -> float:
        """The delay to wait now; the one after it doubles (up to ``max_s``)."""
        base = self.base_s
        self.failures += 1
        if not self.jitter:
            return base
        return base * (1.0 + self.jitter * (2.0 * self.rng.random() - 1.0))

    def reset(self) -> None:
        """A success: the next delay is ``min_s`` again."""
        self.failures = 0
