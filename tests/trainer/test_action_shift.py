"""The action shift: a shifted network scores where the fingers land; export and serving keep it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from agent.config import CemConfig, PolicyConfig
from agent.policy import load_policy
from testkit.qnet import TINY
from trainer.action_shift import ShiftSearch, search_shift
from trainer.dataset import Batch
from trainer.export import load_qnet, make_bundle
from trainer.finetune.selection import keep_shift
from trainer.qnet import QNet


def test_shifted_network_equals_parent_at_the_landing_point() -> None:
    torch.manual_seed(0)
    parent = QNet(TINY).eval()
    shifted = QNet(dataclasses.replace(TINY, action_shift_m=(0.1, -0.03))).eval()
    shifted.load_state_dict(parent.state_dict())  # the shift is config, not a weight
    images = torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8)
    actions = torch.rand(2, 5, 3) * 2 - 1
    moved = actions + torch.tensor([0.1 / 0.20, -0.03 / 0.15, 0.0])
    with torch.no_grad():
        assert torch.allclose(shifted(images, actions), parent(images, moved), atol=1e-6)
        assert not torch.equal(shifted(images, actions), parent(images, actions))


def test_shifted_bundle_round_trips_and_serves_like_torch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = QNet(dataclasses.replace(TINY, action_shift_m=(0.1, 0.0))).eval()
    bundle = make_bundle(net, {"condition": "c"}, tmp_path)
    again = load_qnet(bundle)
    assert again.config.action_shift_m == (0.1, 0.0)
    policy = load_policy(bundle, PolicyConfig(intra_op_threads=1), CemConfig())
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    d = policy.act(image)
    with torch.no_grad():
        q = net(torch.from_numpy(image)[None], torch.from_numpy(d.action)[None, None]).item()
    assert abs(q - d.q) < 1e-4


def _labelled(net: QNet, n: int, seed: int, shift_m: tuple[float, float] | None) -> Batch:
    """Random images and actions, labelled by where ``net`` would score the fingers landing at
    command + ``shift_m`` (above its median: success); None: labels are coin flips."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    actions = rng.uniform(-0.6, 0.6, (n, 3)).astype(np.float32)
    if shift_m is None:
        y = rng.random(n) < 0.5
    else:
        spec = net.spec
        moved = actions + np.array(
            [shift_m[0] / spec.workspace_x_m, shift_m[1] / spec.workspace_y_m, 0], np.float32
        )
        with torch.no_grad():
            q = net(torch.from_numpy(images), torch.from_numpy(moved)[:, None, :])[:, 0].numpy()
        y = q > np.median(q)
    return Batch(images, actions, y.astype(np.float32), np.ones(n, bool), np.zeros_like(images))


def test_shift_search_finds_the_landing_point_and_held_out_grasps_must_confirm_it() -> None:
    torch.manual_seed(1)
    net = QNet(TINY).eval()
    true = (0.09, 0.0)
    train = _labelled(net, 160, 0, true)
    cfg = ShiftSearch()
    shift, rec = search_shift(
        net, train, "auc", cfg, reference=1.0, held=_labelled(net, 80, 1, true)
    )
    assert rec["adopted"] and rec["confirmed"] and shift == true, rec
    assert rec["score_best"] == 1.0 and rec["gain"] > 0.1
    # the same search grasps, but held-out outcomes that no shift explains: not adopted
    shift, rec = search_shift(
        net, train, "auc", cfg, reference=1.0, held=_labelled(net, 80, 2, None)
    )
    assert not rec["adopted"] and rec["confirmed"] is False and shift == (0.0, 0.0), rec
    # a shift that does not bring the score back to the prior reference: not adopted
    shift, rec = search_shift(net, train, "auc", cfg, reference=2.0)
    assert not rec["adopted"] and not rec["restores"] and shift == (0.0, 0.0)


def test_a_shift_stays_only_when_its_arm_beats_plain_fine_tuning() -> None:
    """Regression: in the demo a checkerboard job adopted a (-6, -6) cm shift that restored
    the confused parent's held-out AUC (0.40 -> 0.75) but moved no finger; 50 plain steps
    reached 0.89. The offset gripper's shift beats plain steps by far."""

    def curve(*scores: tuple[int, float]) -> list[dict[str, object]]:
        return [{"step": s, "score_new": v} for s, v in scores]

    checkerboard = keep_shift(curve((0, 0.75), (50, 0.80)), curve((50, 0.89)), 50)
    assert checkerboard == (False, 0.80, 0.89)
    offset = keep_shift(curve((0, 0.86), (50, 0.84)), curve((50, 0.35)), 50)
    assert offset == (True, 0.86, 0.35)
    assert keep_shift(curve((0, 0.7), (100, 0.99)), curve((50, 0.8)), 50)[0] is False
    assert keep_shift(curve(), curve(), 50)[0] is True  # nothing scored: the search's verdict
