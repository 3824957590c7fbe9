"""QT-Opt learner: bootstrapping on a small MDP, and a step on the real network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from agent.spec import Spec
from trainer.cem import CemConfig
from trainer.dataset import Batch, Episode, EpisodeDataset, EpisodeWriter, Step
from trainer.learner import Learner, LearnerConfig, greedy_actions
from trainer.qnet import QNet
from trainer.sampler import MixtureSampler

torch.set_num_threads(1)
TINY = Spec(image_height=4, image_width=4, horizon=2)
PENALTY = -0.05
SAFE = 0.6


class TinyQ(nn.Module):
    """State = mean of the red channel; an MLP on (state, action)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    def encode(self, images: Tensor) -> Tensor:
        return images[..., 0].float().mean(dim=(1, 2)) / 255.0

    def logits_from(self, encoded: Tensor, actions: Tensor) -> Tensor:
        s = encoded.view(-1, 1, 1).expand(-1, actions.shape[1], 1)
        out: Tensor = self.mlp(torch.cat([s, actions], dim=2)).squeeze(2)
        return out


def _img(state: int) -> np.ndarray:
    return np.full((4, 4, 3), 255 * state, dtype=np.uint8)


def _mdp_batch(rng: np.random.Generator, n: int) -> Batch:
    """Two-step chain. In s0, x < 0 ends with a safe reward 0.6; x >= 0 moves to s1 with a
    step penalty. In s1, x >= 0 succeeds (reward 1), x < 0 fails (0). Optimal: go right twice
    (value 0.85 > 0.6), which a learner that does not bootstrap cannot see."""
    states = rng.integers(0, 2, n)
    actions = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    right = actions[:, 0] >= 0
    rewards = np.where(states == 0, np.where(right, PENALTY, SAFE), right.astype(float))
    dones = ~((states == 0) & right)
    images = np.stack([_img(int(s)) for s in states])
    next_images = np.stack([_img(1) if not d else np.zeros((4, 4, 3), np.uint8) for d in dones])
    return Batch(images, actions, rewards.astype(np.float32), dones, next_images)


def test_learner_bootstraps_to_the_optimal_policy_on_a_two_step_mdp() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = TinyQ()
    cfg = LearnerConfig(lr=3e-3, gamma=0.9, polyak=0.9, target2_period=10, augment=False)
    learner = Learner(net, TINY, cfg)
    for _ in range(600):
        learner.step(_mdp_batch(rng, 64))
    images = torch.from_numpy(np.stack([_img(0), _img(1)]))
    actions, q = greedy_actions(net, images, TINY, CemConfig(samples=128, elites=8, iterations=3))
    assert actions[0, 0] > 0 and actions[1, 0] > 0, actions
    assert abs(float(q[1]) - 1.0) < 0.08
    assert abs(float(q[0]) - (PENALTY + 0.9 * 1.0)) < 0.08, q
    with torch.no_grad():
        left = torch.sigmoid(
            net.logits_from(net.encode(images[:1]), torch.tensor([[[-0.5, 0, 0]]]))
        )
    assert abs(float(left) - SAFE) < 0.08


def test_qnet_learns_a_simple_rule_from_disk_with_augmentation(tmp_path: Path) -> None:
    """End to end on the real network with a rule every flip/rotation keeps: success iff the
    grasp is within 8 cm of the centre."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    with EpisodeWriter(tmp_path) as w:
        for _ in range(256):
            img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            a = rng.uniform(-1, 1, 3).astype(np.float32)
            ok = bool(np.hypot(a[0] * 0.2, a[1] * 0.15) < 0.08)
            w.append(Episode((Step(img, a, float(ok), True),), ok, "baseline", "p", 0.0))
    ds = EpisodeDataset.open(tmp_path)
    sampler = MixtureSampler([(ds, 1.0)], batch_size=32, seed=0)
    net = QNet()
    learner = Learner(net, Spec(), LearnerConfig(lr=2e-3))
    first = [learner.step(sampler.sample()).loss for _ in range(5)]
    for _ in range(60):
        stats = learner.step(sampler.sample())
    assert np.isfinite(stats.loss)
    assert stats.loss < 0.8 * float(np.mean(first))
    net.eval()
    img = torch.from_numpy(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8))
    with torch.no_grad():
        q = net(img, torch.tensor([[[0.0, 0.0, 0.3], [0.9, 0.9, 0.3]]]))
    assert float(q[0, 0]) > float(q[0, 1])
