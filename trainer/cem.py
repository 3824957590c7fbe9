"""Cross-entropy method in torch, batched over B states (for Bellman targets).

Same semantics as the agent's numpy CEM (``agent/cem.py``), per state:

1. ``mean`` = centre of the action box, ``std = init_std * (high - low) / 2``.
2. Repeat ``iterations`` times: draw ``samples`` candidates from
   N(mean, diag(std^2)) and clip them into [low, high]; score them all in one
   batched call; keep the ``elites`` best by Q; refit ``mean`` and ``std``
   (population std, ddof=0) of the elites, with std floored at
   ``min_std * (high - low) / 2``.
3. Return the best-scoring candidate seen in any iteration and its Q.

QT-Opt defaults: 64 samples, 6 elites, 2 iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from agent.cem import CemParams

ScoreFn = Callable[[Tensor], Tensor]
"""Scores candidates [B, N, A] -> Q [B, N] (any monotone score: logits work too)."""


CemConfig = CemParams
"""CEM hyper-parameters: the agent's own (one definition for serving and Bellman targets);
``init_std`` and ``min_std`` are fractions of each dimension's half-range."""

DEFAULT_CEM = CemConfig()
"""QT-Opt's defaults: 64 samples, 6 elites, 2 iterations."""


def cem_maximise(
    score: ScoreFn,
    batch: int,
    low: Tensor,
    high: Tensor,
    config: CemConfig = DEFAULT_CEM,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Maximise ``score`` over the box for ``batch`` states; returns (actions [B, A], q [B])."""
    dim = low.shape[0]
    half = (high - low) / 2
    mean = ((low + high) / 2).expand(batch, dim).clone()
    std = (half * config.init_std).expand(batch, dim).clone()
    floor = half * config.min_std
    best_q = torch.full((batch,), -torch.inf, device=low.device)
    best_a = mean.clone()
    rows = torch.arange(batch, device=low.device)
    for _ in range(config.iterations):
        noise = torch.randn(
            (batch, config.samples, dim), generator=generator, device=low.device, dtype=low.dtype
        )
        cand = torch.clamp(mean.unsqueeze(1) + noise * std.unsqueeze(1), low, high)
        q = score(cand)
        if q.shape != (batch, config.samples):
            raise ValueError(
                f"score returned shape {tuple(q.shape)}, want {(batch, config.samples)}"
            )
        top_q, top_idx = torch.topk(q, config.elites, dim=1)
        better = top_q[:, 0] > best_q
        best_q = torch.where(better, top_q[:, 0], best_q)
        best_a = torch.where(better.unsqueeze(1), cand[rows, top_idx[:, 0]], best_a)
        elites = torch.gather(cand, 1, top_idx.unsqueeze(2).expand(-1, -1, dim))
        mean = elites.mean(dim=1)
        std = torch.maximum(elites.std(dim=1, unbiased=False), floor)
    return best_a, best_q
