"""Success of a policy bundle in the sim cell, served exactly as the daemon serves it.

Usage: python -m bench.policy_eval [--bundle DIR] [--condition NAME] [--param k=v ...]
                                   [--grasps N] [--seed S] [--seeds K] [--workers W]

The bundle (default: the shipped base policy, policies/base) is validated and
loaded through agent.policy.load_offline (ONNX Runtime, CPU unless CUDA is
present, numpy CEM 64/6/2) and grasps on held-out test objects (900-999). The
grasps are split over K seeds (separate bins), run in W processes. Prints
progress to stderr and, as the last line of stdout, one JSON object with
success, n, the Wilson 95% interval and the per-seed figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from drivers.sim.cli import wilson
from drivers.sim.conditions import CONDITION_NAMES, make_condition, parse_param_args

ROOT = Path(__file__).resolve().parents[1]


def run_seed(
    args: tuple[str, str, dict[str, float], int, int, str, int, int, float],
) -> dict[str, object]:
    """Grasp ``n`` times in a fresh cell seeded ``seed``; returns wins, n, mean Q, latency."""
    bundle_dir, condition, params, seed, n, split, samples, iterations, init_std = args
    import numpy as np

    from agent.bundle import validate_bundle
    from agent.config import CemConfig
    from agent.policy import load_offline
    from drivers.sim.cell import SimCell
    from drivers.sim.config import SimConfig

    bundle = validate_bundle(Path(bundle_dir))
    cem = CemConfig(samples=samples, iterations=iterations, init_std=init_std)
    policy = load_offline(bundle, cem)
    wins, qs, lat = 0, [], []
    cfg = SimConfig(split=split, seed=seed, condition=condition, condition_params=params)  # type: ignore[arg-type]
    with SimCell(cfg) as cell:
        for _ in range(n):
            obs = cell.observe()
            d = policy.act(obs.image)
            res = cell.execute(d.action)
            wins += int(bool(res.outcome and res.outcome.success))
            qs.append(d.q)
            lat.append(d.latency_s)
    return {
        "seed": seed,
        "n": n,
        "wins": wins,
        "mean_q": float(np.mean(qs)),
        "p50_decision_ms": float(np.median(lat) * 1e3),
    }


def evaluate(
    bundle: Path,
    condition: str,
    params: dict[str, float],
    grasps: int,
    seed: int,
    seeds: int,
    workers: int,
    split: str = "test",
    cem_samples: int = 64,
    cem_iterations: int = 2,
    cem_init_std: float = 0.5,
) -> dict[str, object]:
    """Evaluate a bundle; returns the JSON-ready result."""
    make_condition(condition, params)  # fail fast on a bad name or parameter
    per = [grasps // seeds + (1 if i < grasps % seeds else 0) for i in range(seeds)]
    jobs = [
        (
            str(bundle),
            condition,
            params,
            seed + i,
            n,
            split,
            cem_samples,
            cem_iterations,
            cem_init_std,
        )
        for i, n in enumerate(per)
        if n
    ]
    t0 = time.time()
    rows: list[dict[str, object]] = []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(mp.get_context("spawn").Pool(workers))
            results: Iterator[dict[str, object]] = pool.imap_unordered(run_seed, jobs)
        else:  # in this process: no worker to start (seconds per evaluation)
            results = map(run_seed, jobs)
        for row in results:
            rows.append(row)
            done = sum(int(r["n"]) for r in rows)  # type: ignore[call-overload]
            wins = sum(int(r["wins"]) for r in rows)  # type: ignore[call-overload]
            print(
                f"{condition}: {done}/{grasps} grasps, success {wins / done:.1%} "
                f"({time.time() - t0:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
    wins = sum(int(r["wins"]) for r in rows)  # type: ignore[call-overload]
    n = sum(int(r["n"]) for r in rows)  # type: ignore[call-overload]
    lo, hi = wilson(wins, n)
    meta = json.loads((bundle / "meta.json").read_text())
    return {
        "bundle": meta.get("id"),
        "condition": condition,
        "params": params,
        "split": split,
        "cem": {"samples": cem_samples, "iterations": cem_iterations, "init_std": cem_init_std},
        "success": round(wins / max(n, 1), 4),
        "n": n,
        "ci95": [round(lo, 4), round(hi, 4)],
        "seeds": sorted(rows, key=lambda r: int(r["seed"])),  # type: ignore[call-overload]
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, default=ROOT / "policies" / "base")
    ap.add_argument("--condition", choices=CONDITION_NAMES, default="baseline")
    ap.add_argument("--param", action="append", default=[], help="severity override key=value")
    ap.add_argument("--grasps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--split", choices=["train", "test"], default="test")
    ap.add_argument("--cem-samples", type=int, default=64, help="CEM samples per iteration")
    ap.add_argument("--cem-iterations", type=int, default=2, help="CEM iterations")
    ap.add_argument("--cem-init-std", type=float, default=0.5, help="CEM initial std")
    args = ap.parse_args()
    try:
        params = parse_param_args(args.param)
        make_condition(args.condition, params)
    except ValueError as exc:
        ap.error(str(exc))
    res = evaluate(
        args.bundle,
        args.condition,
        params,
        args.grasps,
        args.seed,
        args.seeds,
        args.workers,
        args.split,
        args.cem_samples,
        args.cem_iterations,
        args.cem_init_std,
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
