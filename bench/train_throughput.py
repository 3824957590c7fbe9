"""Trainer throughput: gradient steps/s and the share of time outside forward/backward.

Builds a synthetic on-disk dataset in a temporary directory (two sources mixed
50/50, as in fine-tuning), then times QT-Opt learner steps on the default
Q-network. The last line of stdout is one JSON object.

    python -m bench.train_throughput [--batch 128] [--steps 30] [--threads 2] [--horizon 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agent.spec import Spec
from trainer.dataset import Episode, EpisodeDataset, EpisodeWriter, Step
from trainer.learner import Learner, LearnerConfig
from trainer.qnet import QNet
from trainer.sampler import MixtureSampler


def _write_source(root: Path, episodes: int, horizon: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with EpisodeWriter(root) as w:
        for _ in range(episodes):
            steps = []
            for i in range(horizon):
                done = i == horizon - 1
                ok = bool(rng.random() < 0.4) and done
                steps.append(
                    Step(
                        image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                        action=rng.uniform(-1, 1, 3).astype(np.float32),
                        reward=float(ok) - (0.0 if done else 0.05),
                        done=done,
                    )
                )
            w.append(Episode(tuple(steps), ok, "baseline", "bench", time.time()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128, help="transitions per gradient step")
    ap.add_argument("--steps", type=int, default=30, help="timed gradient steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--horizon", type=int, default=1, help="steps per episode (>1 runs CEM)")
    ap.add_argument("--episodes", type=int, default=2000, help="episodes per source")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = Spec(horizon=args.horizon)
    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(tmp) / "prior", Path(tmp) / "new"]
        for k, root in enumerate(roots):
            _write_source(root, args.episodes, args.horizon, seed=k)
        sources = [(EpisodeDataset.open(r), 0.5) for r in roots]
        sampler = MixtureSampler(sources, batch_size=args.batch, seed=0)
        learner = Learner(QNet(spec=spec), spec, LearnerConfig())
        for _ in range(args.warmup):
            learner.step(sampler.sample())
        t_sample = t_prep = t_target = t_update = 0.0
        start = time.perf_counter()
        for _ in range(args.steps):
            t0 = time.perf_counter()
            batch = sampler.sample()
            t_sample += time.perf_counter() - t0
            st = learner.step(batch)
            t_prep += st.t_prepare_s
            t_target += st.t_target_s
            t_update += st.t_update_s
        wall = time.perf_counter() - start
    outside = wall - t_update
    result = {
        "bench": "train_throughput",
        "batch": args.batch,
        "threads": args.threads,
        "horizon": args.horizon,
        "steps": args.steps,
        "steps_per_s": args.steps / wall,
        "samples_per_s": args.steps * args.batch / wall,
        "share_outside_fwd_bwd": outside / wall,
        "share_sampling": t_sample / wall,
        "share_augment": t_prep / wall,
        "share_targets": t_target / wall,
        "goal_share_outside": 0.10,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
