"""Parallel data collection in the sim cell with the scripted/random prior or a policy.

Each worker process owns one :class:`SimCell` and writes shards of grasps
(``image`` uint8 [n,H,W,3], ``action`` float32 [n,3], ``success`` uint8 [n])
as ``.npz`` files (no pickle) into ``out_dir``; a shard is written to a temp
name and renamed, so a crash never leaves a half shard. Collection is
resumable: existing shards are counted and skipped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from plumbing.atomic import replacing

SHARD = 500
"""Grasps per shard file."""


@dataclass(frozen=True)
class CollectConfig:
    """What to collect."""

    grasps: int = 20_000
    """Total grasps over all workers."""
    workers: int = 2
    """Processes (one per core)."""
    seed: int = 0
    """Base seed; worker ``i`` uses ``seed * 1000 + i``."""
    random_frac: float = 0.25
    """Share of uniform-random grasps (prior mode)."""
    position_noise_m: float = 0.015
    """Std of the noise added to scripted grasp points (prior mode)."""
    yaw_random_frac: float = 0.3
    """Share of scripted grasps whose yaw is replaced by a random one (prior mode)."""
    condition: str = "baseline"
    """Sim condition."""
    split: str = "train"
    """Object split."""
    policy_bundle: str = ""
    """If set, collect with this ONNX bundle + CEM (on-policy round) instead of the prior."""
    epsilon: float = 0.2
    """On-policy rounds: share of exploratory actions (half random, half scripted)."""


ActFn = Callable[[npt.NDArray[np.uint8], object, np.random.Generator], npt.NDArray[np.float32]]


def _prior_actor(cfg: CollectConfig, spec: object) -> ActFn:
    from agent.spec import Spec
    from drivers.sim.scripted import ScriptedPolicy

    assert isinstance(spec, Spec)
    scripted: dict[int, ScriptedPolicy] = {}

    def act(
        image: npt.NDArray[np.uint8], truth: object, rng: np.random.Generator
    ) -> npt.NDArray[np.float32]:
        if rng.random() < cfg.random_frac:
            return rng.uniform(spec.low, spec.high).astype(np.float32)
        pol = scripted.get(id(rng))
        if pol is None:
            pol = scripted[id(rng)] = ScriptedPolicy(spec, rng, cfg.position_noise_m)
        a = pol.act(image, truth)  # type: ignore[arg-type]
        if rng.random() < cfg.yaw_random_frac:
            a[2] = rng.uniform(-1.0, 1.0)
        return a

    return act


def _policy_actor(cfg: CollectConfig, spec: object) -> ActFn:
    from agent.bundle import validate_bundle
    from agent.config import CemConfig
    from agent.policy import load_offline  # ONNX Runtime + numpy CEM, as the daemon serves

    policy = load_offline(validate_bundle(Path(cfg.policy_bundle)), CemConfig())
    prior = _prior_actor(CollectConfig(random_frac=0.5), spec)

    def act(
        image: npt.NDArray[np.uint8], truth: object, rng: np.random.Generator
    ) -> npt.NDArray[np.float32]:
        if rng.random() < cfg.epsilon:
            return prior(image, truth, rng)
        return policy.act(image).action

    return act


def _worker(cfg: CollectConfig, index: int, todo: int, out_dir: str, first_shard: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from drivers.sim.cell import SimCell
    from drivers.sim.config import SimConfig

    seed = cfg.seed * 1000 + index
    rng = np.random.default_rng(seed + 17)
    sim_cfg = SimConfig(split=cfg.split, seed=seed, condition=cfg.condition)  # type: ignore[arg-type]
    out = Path(out_dir)
    with SimCell(sim_cfg) as cell:
        actor = _policy_actor(cfg, cell.spec) if cfg.policy_bundle else _prior_actor(cfg, cell.spec)
        shard = first_shard
        done = 0
        while done < todo:
            n = min(SHARD, todo - done)
            images = np.empty((n, *cell.spec.image_shape), np.uint8)
            actions = np.empty((n, cell.spec.action_dim), np.float32)
            success = np.empty(n, np.uint8)
            for i in range(n):
                obs = cell.observe()
                a = cell.spec.clip_action(actor(obs.image, cell.privileged(), rng))
                res = cell.execute(a)
                images[i], actions[i] = obs.image, a
                success[i] = int(bool(res.outcome and res.outcome.success))
            with replacing(out / f"w{index}-{shard:05d}.npz") as tmp:
                np.savez(tmp, image=images, action=actions, success=success)
            shard += 1
            done += n


def existing(out_dir: Path) -> int:
    """Grasps already collected in ``out_dir``."""
    total = 0
    for f in sorted(out_dir.glob("w*.npz")):
        with np.load(f, allow_pickle=False) as z:
            total += int(z["success"].shape[0])
    return total


def load_shards(
    out_dir: Path,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Concatenate every shard in ``out_dir`` (image, action, success)."""
    imgs, acts, succ = [], [], []
    for f in sorted(out_dir.glob("w*.npz")):
        with np.load(f, allow_pickle=False) as z:
            imgs.append(z["image"])
            acts.append(z["action"])
            succ.append(z["success"])
    if not imgs:
        raise FileNotFoundError(f"no shards in {out_dir}")
    return np.concatenate(imgs), np.concatenate(acts), np.concatenate(succ)


def collect(cfg: CollectConfig, out_dir: Path, progress: bool = True) -> int:
    """Collect until ``out_dir`` holds ``cfg.grasps`` grasps; returns the count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    have = existing(out_dir)
    todo = cfg.grasps - have
    if todo <= 0:
        return have
    per = [todo // cfg.workers + (1 if i < todo % cfg.workers else 0) for i in range(cfg.workers)]
    first = 1 + max((int(f.stem.split("-")[1]) for f in out_dir.glob("w*.npz")), default=0)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(cfg, i, n, str(out_dir), first + i * 1000))
        for i, n in enumerate(per)
        if n > 0
    ]
    t0 = time.time()
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        time.sleep(2.0)
        if progress:
            n = sum(1 for _ in out_dir.glob("w*.npz")) * SHARD
            print(
                f"\rcollect: ~{min(n, cfg.grasps)}/{cfg.grasps} grasps, {time.time() - t0:.0f}s",
                end="",
                file=sys.stderr,
                flush=True,
            )
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"collection worker exited with {p.exitcode}")
    if progress:
        print(file=sys.stderr)
    return existing(out_dir)
