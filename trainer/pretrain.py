"""Pre-training the base policy (paper section III-A), resumable stage by stage.

Stages, recorded in ``<out>/state.json`` so a restarted run picks up where it stopped:

1. ``prior``: collect grasps in the sim cell (baseline, training objects) with
   the scripted/random prior, in parallel workers; ingest them into the base
   dataset (``<out>/dataset``, the trainer's episode format).
2. ``offline``: QT-Opt updates on the base dataset, checkpointed every
   ``checkpoint_every`` steps (``<out>/checkpoint``).
3. ``round-k``: export the current network, collect ``round_grasps`` with it
   through ONNX Runtime + CEM (the daemon's serving path) with
   ``epsilon`` exploration, add them to the base dataset, train
   ``round_steps`` more ("online" rounds of QT-Opt).
4. ``export``: write the base bundle (``<out>/bundles/<id>``) with data counts,
   the training config and the held-out loss in its meta.json.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from agent.bundle import Bundle
from agent.spec import DEFAULT_SPEC
from plumbing.atomic import write_text
from trainer import loop
from trainer.checkpoint import load_checkpoint
from trainer.collect import CollectConfig, collect, load_shards
from trainer.dataset import Episode, EpisodeDataset, EpisodeWriter, Step
from trainer.export import make_bundle
from trainer.learner import Learner, LearnerConfig
from trainer.qnet import QNet, QNetConfig


@dataclass(frozen=True)
class PretrainConfig:
    """The whole pre-training recipe (defaults: the shipped base policy)."""

    seed: int = 1
    """Seed of collection, initialisation and sampling."""
    prior_grasps: int = 24_000
    """Grasps collected with the scripted/random prior."""
    offline_steps: int = 3_000
    """Gradient steps on the prior data."""
    rounds: int = 4
    """Online rounds (collect with the current policy, then train)."""
    round_grasps: int = 4_000
    """Grasps collected per online round."""
    round_steps: int = 1_500
    """Gradient steps after each online round."""
    epsilon: float = 0.2
    """Share of exploratory (prior) actions during online collection."""
    batch_size: int = 128
    """Transitions per gradient step."""
    lr: float = 2e-3
    """Adam learning rate (fine-tuning uses 25% of it)."""
    workers: int = 2
    """Collection processes."""
    threads: int = 2
    """torch threads for training."""
    checkpoint_every: int = 250
    """Steps between checkpoints."""
    holdout: float = 0.03
    """Share of episodes held out to report the validation loss."""
    network: QNetConfig = field(default_factory=QNetConfig)
    """Shape of the Q-network (tests use a tiny one)."""


def _stage(out: Path) -> dict[str, Any]:
    f = out / "state.json"
    return json.loads(f.read_text()) if f.exists() else {"done": []}


def _mark(out: Path, state: dict[str, Any], stage: str, **extra: Any) -> None:
    state["done"].append(stage)
    state.update(extra)
    write_text(out / "state.json", json.dumps(state, indent=2))


def ingest_shards(
    shard_dir: Path, dataset: Path, policy_id: str, condition: str = "baseline"
) -> int:
    """Append every collected grasp in ``shard_dir`` to the episode dataset; returns the count."""
    images, actions, success = load_shards(shard_dir)
    return ingest_arrays(images, actions, success, dataset, policy_id, condition, shard_dir.name)


def ingest_arrays(
    images: npt.NDArray[np.uint8],
    actions: npt.NDArray[np.float32],
    success: npt.NDArray[np.uint8],
    dataset: Path,
    policy_id: str,
    condition: str,
    source: str,
) -> int:
    """Append one-step grasps (image, action, success per row) to the episode dataset."""
    now = time.time()
    with EpisodeWriter(dataset, DEFAULT_SPEC, chunk_transitions=4096) as w:
        for i in range(len(success)):
            ok = bool(success[i])
            w.append(
                Episode(
                    steps=(Step(image=images[i], action=actions[i], reward=float(ok), done=True),),
                    success=ok,
                    condition=condition,
                    policy_id=policy_id,
                    timestamp=now,
                    extra={"source": source},
                )
            )
    return len(success)


def _train(
    learner: Learner,
    data: EpisodeDataset,
    held: EpisodeDataset,
    until: int,
    cfg: PretrainConfig,
    ckpt: Path,
    label: str,
) -> float:
    """Train until ``learner.steps == until`` through :mod:`trainer.loop`; returns held-out BCE."""
    held_batch = held.sample(min(1024, max(len(held), 1)), np.random.default_rng(1))
    loop.run(
        learner,
        lambda rng: data.sample(cfg.batch_size, rng),
        until,
        ckpt,
        loop.LoopConfig(seed=cfg.seed, checkpoint_every=cfg.checkpoint_every, label=label),
    )
    return learner.evaluate(held_batch)


def pretrain(cfg: PretrainConfig, out: Path) -> Bundle:
    """Run (or resume) the whole recipe under ``out``; returns the validated base bundle."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    state = _stage(out)
    dataset = out / "dataset"
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if "prior" not in state["done"]:
        print("stage prior: collecting with the scripted/random prior", file=sys.stderr)
        collect(
            CollectConfig(grasps=cfg.prior_grasps, workers=cfg.workers, seed=cfg.seed),
            out / "data" / "prior",
        )
        n = ingest_shards(out / "data" / "prior", dataset, "prior")
        _mark(out, state, "prior", prior_grasps=n)
    net = QNet(cfg.network).to(loop.pick_device())
    learner = Learner(net, DEFAULT_SPEC, LearnerConfig(lr=cfg.lr, seed=cfg.seed))
    resumed = load_checkpoint(learner, out / "checkpoint")
    if resumed:
        print(f"resumed from checkpoint at step {learner.steps}", file=sys.stderr)
    held_loss = float("nan")
    data, held = EpisodeDataset.open(dataset).split_episodes(cfg.holdout, seed=cfg.seed)
    if "offline" not in state["done"]:
        held_loss = _train(
            learner, data, held, cfg.offline_steps, cfg, out / "checkpoint", "offline"
        )
        _mark(out, state, "offline", offline_held_loss=held_loss)
    for r in range(1, cfg.rounds + 1):
        name = f"round-{r}"
        if name in state["done"]:
            continue
        shard_dir = out / "data" / name
        if f"{name}-collect" not in state["done"]:
            policy = make_bundle(
                loop.on_cpu(net).eval(),
                {"condition": "baseline", "training": {"stage": name}},
                out / "bundles",
            )
            net.train()
            print(f"stage {name}: collecting with policy {policy.id}", file=sys.stderr)
            collect(
                CollectConfig(
                    grasps=cfg.round_grasps,
                    workers=cfg.workers,
                    seed=cfg.seed * 100 + r,
                    policy_bundle=str(policy.path),
                    epsilon=cfg.epsilon,
                ),
                shard_dir,
            )
            ingest_shards(shard_dir, dataset, policy.id)
            _mark(out, state, f"{name}-collect")
        data, held = EpisodeDataset.open(dataset).split_episodes(cfg.holdout, seed=cfg.seed)
        until = cfg.offline_steps + r * cfg.round_steps
        held_loss = _train(learner, data, held, until, cfg, out / "checkpoint", name)
        _mark(out, state, name, **{f"{name}_held_loss": held_loss})
    full = EpisodeDataset.open(dataset)
    meta = {
        "condition": "baseline",
        "training": {"kind": "pretrain", **dataclasses.asdict(cfg), "steps": learner.steps},
        "data": {
            "transitions": len(full),
            "episodes": full.num_episodes,
            "successes": len(full.filter(success=True)),
        },
        "validation": {"held_out_bce": held_loss},
    }
    bundle = make_bundle(loop.on_cpu(net).eval(), meta, out / "bundles")
    _mark(out, state, "export", bundle=str(bundle.path), bundle_id=bundle.id)
    return bundle
