"""Cross-entropy method over a box of actions (pure numpy, no I/O).

As in QT-Opt: sample candidates from a diagonal Gaussian, score them all in one
batched call, keep the elites, refit mean and std, repeat. Samples are clipped
into the action box, so every scored (and returned) action respects the bounds.
The answer is the best-scoring candidate seen in any iteration, with its Q.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
ScoreFn = Callable[[F32], F32]


@dataclass(frozen=True)
class CemParams:
    """Cross-entropy method over the normalised action box (the ``[cem]`` config table)."""

    samples: int = 64
    """Candidate actions per iteration."""
    elites: int = 6
    """Best candidates kept to refit the Gaussian."""
    iterations: int = 2
    """Sample/refit rounds per decision."""
    init_std: float = 0.5
    """Initial standard deviation, a fraction of the half-range (the mean starts at the centre)."""
    min_std: float = 0.01
    """Floor on the refitted standard deviation, as a fraction of the half-range."""
    seed: int = 0
    """Seed of the sampler."""

    def __post_init__(self) -> None:
        problems = [
            msg
            for bad, msg in (
                (self.samples < 2, f"cem.samples = {self.samples}: must be >= 2"),
                (
                    not 1 <= self.elites <= self.samples,
                    f"cem.elites = {self.elites}: must be in [1, cem.samples]",
                ),
                (self.iterations < 1, f"cem.iterations = {self.iterations}: must be >= 1"),
                (not self.init_std > 0, f"cem.init_std = {self.init_std}: must be > 0"),
                (not self.min_std >= 0, f"cem.min_std = {self.min_std}: must be >= 0"),
            )
            if bad
        ]
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class CemResult:
    """The chosen action, its Q, and how many candidates were scored."""

    action: F32
    """Best action found, float32 [A], inside the bounds."""
    q: float
    """Q of that action as scored."""
    evaluated: int
    """Candidates scored in total."""


class Cem:
    """A reusable CEM optimiser for one action box; holds its own RNG."""

    def __init__(self, params: CemParams, low: F32, high: F32, seed: int | None = None) -> None:
        self.params = params
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        if self.low.shape != self.high.shape or np.any(self.low >= self.high):
            raise ValueError("action bounds must have equal shape and low < high")
        self._rng = np.random.default_rng(params.seed if seed is None else seed)
        self._centre: F32 = ((self.low + self.high) / 2).astype(np.float32)
        self._half: F32 = ((self.high - self.low) / 2).astype(np.float32)

    def optimise(self, score: ScoreFn) -> CemResult:
        """Maximise ``score`` (actions [N, A] -> Q [N]) over the box."""
        p = self.params
        dim = self.low.shape[0]
        mean = self._centre.copy()
        std = self._half * np.float32(p.init_std)
        best_q = -np.inf
        best_a: F32 = mean
        for _ in range(p.iterations):
            noise = self._rng.standard_normal((p.samples, dim), dtype=np.float32)
            cand: F32 = np.clip(mean + noise * std, self.low, self.high).astype(
                np.float32, copy=False
            )
            q = np.asarray(score(cand), dtype=np.float32).reshape(-1)
            if q.shape[0] != p.samples or not np.all(np.isfinite(q)):
                raise ValueError("score function returned a wrong shape or non-finite Q")
            elite_idx = np.argpartition(q, -p.elites)[-p.elites :]
            top = int(elite_idx[np.argmax(q[elite_idx])])
            if q[top] > best_q:
                best_q = float(q[top])
                best_a = cand[top].copy()
            elites = cand[elite_idx]
            mean = elites.mean(axis=0, dtype=np.float32).astype(np.float32)
            std = np.maximum(
                elites.std(axis=0, dtype=np.float32), np.float32(p.min_std) * self._half
            )
        return CemResult(action=best_a, q=best_q, evaluated=p.samples * p.iterations)
