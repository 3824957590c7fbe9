"""Batched torch CEM used for Bellman targets."""

from __future__ import annotations

import pytest
import torch

from trainer.cem import CemConfig, cem_maximise

torch.set_num_threads(1)
LOW = -torch.ones(3)
HIGH = torch.ones(3)


def test_finds_per_state_optimum_of_a_quadratic() -> None:
    targets = torch.tensor([[0.5, -0.3, 0.1], [-0.8, 0.8, -0.5]])

    def score(a: torch.Tensor) -> torch.Tensor:
        return -((a - targets.unsqueeze(1)) ** 2).sum(dim=2)

    g = torch.Generator().manual_seed(0)
    cfg = CemConfig(samples=64, elites=6, iterations=4)
    best, q = cem_maximise(score, 2, LOW, HIGH, cfg, g)
    assert best.shape == (2, 3) and q.shape == (2,)
    assert torch.allclose(best, targets, atol=0.15)
    torch.testing.assert_close(q, score(best.unsqueeze(1))[:, 0])


def test_actions_stay_inside_bounds_when_optimum_is_outside() -> None:
    seen: list[torch.Tensor] = []

    def score(a: torch.Tensor) -> torch.Tensor:
        seen.append(a)
        return a.sum(dim=2)

    best, _ = cem_maximise(score, 3, LOW, HIGH, CemConfig(), torch.Generator().manual_seed(1))
    every = torch.cat(seen, dim=1)
    assert every.min() >= -1 and every.max() <= 1
    assert every.shape[1] == 2 * 64
    assert torch.all(best > 0.5)


def test_best_seen_is_kept_across_iterations() -> None:
    calls = {"n": 0}

    def score(a: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        q = torch.zeros(a.shape[:2])
        if calls["n"] == 1:
            q[:, 0] = 5.0  # a lucky first draw that later iterations never beat
        return q

    _, q = cem_maximise(score, 2, LOW, HIGH, CemConfig(), torch.Generator().manual_seed(0))
    assert torch.all(q == 5.0)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        CemConfig(samples=4, elites=5)
