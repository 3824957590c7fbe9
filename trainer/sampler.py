"""Batches drawn from several episode datasets with fixed weights (prior vs new data)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from trainer.dataset import Batch, EpisodeDataset, concat_batches


class MixtureSampler:
    """Draws each batch from several sources with fixed weights (e.g. 50/50 prior/new).

    A batch of ``batch_size`` gets ``floor(w_i * batch_size)`` transitions from
    source i, and the remaining few are assigned by the weights at random, so
    the expected share of each source is exactly its weight.
    """

    def __init__(
        self,
        sources: Sequence[tuple[EpisodeDataset, float]],
        batch_size: int,
        seed: int = 0,
    ) -> None:
        if not sources:
            raise ValueError("need at least one source")
        weights = np.asarray([w for _, w in sources], dtype=np.float64)
        if np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("source weights must be >= 0 and not all zero")
        for ds, w in sources:
            if w > 0 and len(ds) == 0:
                raise ValueError(f"source {ds.name} has weight {w} but no transitions")
        self.sources = [ds for ds, _ in sources]
        self.weights = weights / weights.sum()
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.transforms: list[Callable[[Batch], Batch] | None] = [None] * len(self.sources)
        """Per source, applied to its part of each batch (e.g. fine-tuning's action shift)."""

    def counts(self, rng: np.random.Generator | None = None) -> npt.NDArray[np.int64]:
        """How many transitions the next batch takes from each source."""
        g = self.rng if rng is None else rng
        base: npt.NDArray[np.int64] = np.floor(self.weights * self.batch_size).astype(np.int64)
        rest = self.batch_size - int(base.sum())
        if rest:
            base += np.bincount(
                g.choice(len(self.weights), size=rest, p=self.weights),
                minlength=len(self.weights),
            )
        return base

    def sample(self, rng: np.random.Generator | None = None) -> Batch:
        """One mixed batch (sources in order), drawn with ``rng`` (default: the sampler's own)."""
        g = self.rng if rng is None else rng
        parts = [
            ds.sample(int(k), g) for ds, k in zip(self.sources, self.counts(g), strict=True) if k
        ]
        return parts[0] if len(parts) == 1 else concat_batches(parts)
