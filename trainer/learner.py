"""QT-Opt learner: one gradient step on a batch of transitions.

Loss: binary cross-entropy between the online network's sigmoid Q(s, a) and

    y = clip(r + gamma * (1 - done) * min(Q_t1, Q_t2)(s', a*), 0, 1),
    a* = CEM argmax over a of Q_t1(s', a)

with two lagged target networks (clipped double Q): ``Q_t1`` is a Polyak
average of the online weights, ``Q_t2`` a copy of ``Q_t1`` refreshed every
``target2_period`` steps (so it lags further). Rewards come from the data
(1 on success, minus any per-step penalty); ``done`` stops bootstrapping, so
with horizon 1 the target is the logged reward and no CEM runs. States, next
states and actions are augmented by the same random flip/rotation.

The learner is generic over the network: anything with ``encode(images)``
and ``logits_from(encoded, actions [B, N, A]) -> [B, N]`` (see
:class:`QFunction`) that is also an ``nn.Module``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.spec import Spec
from trainer.augment import allowed_transforms, augment, draw_transforms
from trainer.cem import CemConfig, cem_maximise
from trainer.dataset import Batch
from trainer.qnet import PixelMapping


class QFunction(Protocol):
    """What the learner needs from a Q-network (besides being an ``nn.Module``)."""

    def encode(self, images: Tensor) -> Any:
        """Per-image features, computed once and reused for many actions."""
        ...

    def logits_from(self, encoded: Any, actions: Tensor) -> Tensor:
        """Logits [B, N] of actions [B, N, A]."""
        ...


@dataclass(frozen=True)
class LearnerConfig:
    """Hyper-parameters of the QT-Opt update."""

    lr: float = 2e-3
    """Adam learning rate (pre-training; fine-tuning uses 25% of it)."""
    gamma: float = 0.9
    """Discount of the bootstrapped value."""
    polyak: float = 0.995
    """Target 1 <- polyak * target 1 + (1 - polyak) * online, every step."""
    target2_period: int = 200
    """Steps between refreshes of target 2 from target 1."""
    grad_clip: float = 10.0
    """Max global gradient norm (0 disables clipping)."""
    augment: bool = True
    """Apply the 8-fold flip/rotation augmentation (off for asymmetric grippers)."""
    cem: CemConfig = field(default_factory=CemConfig)
    """CEM used to pick a* in the Bellman target."""
    seed: int = 0
    """Seed of augmentation and CEM draws."""


@dataclass(frozen=True)
class StepStats:
    """What one gradient step did and where its time went."""

    loss: float
    """BCE of the batch before the step."""
    q_mean: float
    """Mean predicted P(success) of the batch actions."""
    target_mean: float
    """Mean Bellman target."""
    t_prepare_s: float
    """Seconds for tensor conversion and augmentation."""
    t_target_s: float
    """Seconds for the Bellman targets (target nets + CEM)."""
    t_update_s: float
    """Seconds for the online forward, backward and optimiser step."""


class Learner:
    """Owns the online network, its two target networks and the optimiser."""

    def __init__(
        self,
        net: nn.Module,
        spec: Spec,
        config: LearnerConfig = LearnerConfig(),
        pixels: PixelMapping | None = None,
    ) -> None:
        self.net = net
        self.spec = spec
        self.config = config
        self.target1 = copy.deepcopy(net).eval()
        self.target2 = copy.deepcopy(net).eval()
        for t in (self.target1, self.target2):
            t.requires_grad_(False)
        self.optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
        self.steps = 0
        self.device = next(net.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.low = torch.tensor(spec.action_low, dtype=torch.float32, device=self.device)
        self.high = torch.tensor(spec.action_high, dtype=torch.float32, device=self.device)
        pm = pixels if pixels is not None else getattr(net, "config", None)
        pm = getattr(pm, "pixels", pm)
        self.allowed = allowed_transforms(pm) if isinstance(pm, PixelMapping) else (0,)

    def _q(self, net: nn.Module) -> QFunction:
        return cast(QFunction, net)

    def targets(self, next_images: Tensor, rewards: Tensor, dones: Tensor) -> Tensor:
        """Bellman targets [B] in [0, 1] (no gradient)."""
        y = rewards.clone()
        live = torch.nonzero(~dones).squeeze(1)
        if live.numel():
            with torch.no_grad():
                q1, q2 = self._q(self.target1), self._q(self.target2)
                enc1 = q1.encode(next_images[live])
                enc2 = q2.encode(next_images[live])
                a_star, _ = cem_maximise(
                    lambda a: q1.logits_from(enc1, a),
                    int(live.numel()),
                    self.low,
                    self.high,
                    self.config.cem,
                    self.generator,
                )
                a_star = a_star.unsqueeze(1)
                v = torch.minimum(
                    torch.sigmoid(q1.logits_from(enc1, a_star)),
                    torch.sigmoid(q2.logits_from(enc2, a_star)),
                ).squeeze(1)
            y[live] = y[live] + self.config.gamma * v
        return y.clamp(0.0, 1.0)

    def prepare(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Tensors (images, actions, rewards, dones, next_images), augmented if configured."""
        images_np, next_np, actions_np = batch.images, batch.next_images, batch.actions
        if self.config.augment and len(self.allowed) > 1:
            ks = draw_transforms(actions_np, self.spec, self.allowed, self.rng)
            images_np, next_np, actions_np = augment(
                images_np, next_np, actions_np, ks, self.spec, has_next=~batch.dones
            )
        return self._tensors(images_np, actions_np, batch.rewards, batch.dones, next_np)

    def _tensors(
        self,
        images: npt.NDArray[np.uint8],
        actions: npt.NDArray[np.float32],
        rewards: npt.NDArray[np.float32],
        dones: npt.NDArray[np.bool_],
        next_images: npt.NDArray[np.uint8],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        d = self.device
        return (
            torch.from_numpy(np.ascontiguousarray(images)).to(d),
            torch.from_numpy(np.ascontiguousarray(actions)).to(d, torch.float32),
            torch.from_numpy(rewards).to(d, torch.float32),
            torch.from_numpy(dones).to(d),
            torch.from_numpy(np.ascontiguousarray(next_images)).to(d),
        )

    def step(self, batch: Batch) -> StepStats:
        """One gradient step on ``batch``; updates the target networks afterwards."""
        t0 = time.perf_counter()
        images, actions, rewards, dones, next_images = self.prepare(batch)
        t1 = time.perf_counter()
        y = self.targets(next_images, rewards, dones)
        t2 = time.perf_counter()
        self.net.train()
        logits = (
            self._q(self.net)
            .logits_from(self._q(self.net).encode(images), actions.unsqueeze(1))
            .squeeze(1)
        )
        loss = F.binary_cross_entropy_with_logits(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self._update_targets()
        t3 = time.perf_counter()
        return StepStats(
            loss=float(loss.detach()),
            q_mean=float(torch.sigmoid(logits.detach()).mean()),
            target_mean=float(y.mean()),
            t_prepare_s=t1 - t0,
            t_target_s=t2 - t1,
            t_update_s=t3 - t2,
        )

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> float:
        """BCE of the online network (eval mode, no augmentation) on ``batch``."""
        logits, y = self.logits_and_targets(batch)
        return float(F.binary_cross_entropy_with_logits(logits, y))

    @torch.no_grad()
    def logits_and_targets(self, batch: Batch, chunk: int = 512) -> tuple[Tensor, Tensor]:
        """Online logits (eval mode, no augmentation) and Bellman targets of ``batch`` (CPU)."""
        was = self.net.training
        self.net.eval()
        q = self._q(self.net)
        outs, ys = [], []
        for i in range(0, len(batch), chunk):
            sl = slice(i, i + chunk)
            images, actions, rewards, dones, next_images = self._tensors(
                batch.images[sl],
                batch.actions[sl],
                batch.rewards[sl],
                batch.dones[sl],
                batch.next_images[sl],
            )
            ys.append(self.targets(next_images, rewards, dones).cpu())
            outs.append(q.logits_from(q.encode(images), actions.unsqueeze(1)).squeeze(1).cpu())
        self.net.train(was)
        return torch.cat(outs), torch.cat(ys)

    @torch.no_grad()
    def _update_targets(self) -> None:
        self.steps += 1
        tau = 1.0 - self.config.polyak
        for p_t, p in zip(self.target1.parameters(), self.net.parameters(), strict=True):
            p_t.lerp_(p, tau)
        for b_t, b in zip(self.target1.buffers(), self.net.buffers(), strict=True):
            b_t.copy_(b)
        if self.steps % self.config.target2_period == 0:
            self.target2.load_state_dict(self.target1.state_dict())


def greedy_actions(
    net: nn.Module, images: Tensor, spec: Spec, cem: CemConfig, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """CEM argmax actions [B, A] and their P(success) [B] under ``net`` in eval mode."""
    q = cast(QFunction, net)
    was = net.training
    net.eval()
    with torch.no_grad():
        enc = q.encode(images)
        low = torch.tensor(spec.action_low, dtype=torch.float32)
        high = torch.tensor(spec.action_high, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        a, logit = cem_maximise(lambda a: q.logits_from(enc, a), images.shape[0], low, high, cem, g)
    net.train(was)
    return a, torch.sigmoid(logit)
