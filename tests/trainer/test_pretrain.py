"""Pre-training end to end on tiny budgets: stages, resume, checkpoint round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.bundle import validate_bundle
from agent.spec import DEFAULT_SPEC
from testkit.qnet import TINY
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.dataset import Batch, EpisodeDataset
from trainer.learner import Learner, LearnerConfig
from trainer.pretrain import PretrainConfig, pretrain
from trainer.qnet import QNet


def _batch(n: int = 8) -> Batch:
    rng = np.random.default_rng(0)
    return Batch(
        images=rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
        actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        rewards=rng.integers(0, 2, n).astype(np.float32),
        dones=np.ones(n, bool),
        next_images=np.zeros((n, 64, 64, 3), np.uint8),
    )


def test_checkpoint_round_trip_restores_weights_targets_and_adam(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = Learner(QNet(TINY), DEFAULT_SPEC, LearnerConfig(augment=False))
    for _ in range(3):
        a.step(_batch())
    save_checkpoint(a, tmp_path, {"label": "t"})
    torch.manual_seed(1)
    b = Learner(QNet(TINY), DEFAULT_SPEC, LearnerConfig(augment=False))
    meta = load_checkpoint(b, tmp_path)
    assert meta is not None and meta["steps"] == 3 and b.steps == 3
    for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    for x, y in zip(a.target1.state_dict().values(), b.target1.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    # The restored learner takes the same next step.
    la, lb = a.step(_batch()), b.step(_batch())
    assert la.loss == pytest.approx(lb.loss, rel=1e-6)


def test_no_checkpoint_returns_none(tmp_path: Path) -> None:
    learner = Learner(QNet(TINY), DEFAULT_SPEC)
    assert load_checkpoint(learner, tmp_path / "missing") is None


@pytest.mark.timeout(300)
def test_pretrain_runs_every_stage_and_resumes(tmp_path: Path) -> None:
    cfg = PretrainConfig(
        prior_grasps=30,
        offline_steps=4,
        rounds=1,
        round_grasps=12,
        round_steps=3,
        workers=1,
        threads=1,
        checkpoint_every=2,
        batch_size=8,
        holdout=0.1,
        network=TINY,
    )
    out = tmp_path / "run"
    bundle = pretrain(cfg, out)
    assert validate_bundle(bundle.path).id == bundle.id
    state = json.loads((out / "state.json").read_text())
    assert state["done"] == ["prior", "offline", "round-1-collect", "round-1", "export"]
    meta = bundle.meta
    assert meta["data"]["episodes"] == 42 and meta["training"]["steps"] == 7
    ds = EpisodeDataset.open(out / "dataset")
    assert len(ds) == 42
    # A restart after a crash before export resumes from the checkpoint, collects nothing new.
    state["done"] = ["prior", "offline", "round-1-collect"]
    (out / "state.json").write_text(json.dumps(state))
    again = pretrain(cfg, out)
    assert len(EpisodeDataset.open(out / "dataset")) == 42
    assert again.meta["training"]["steps"] == 7
