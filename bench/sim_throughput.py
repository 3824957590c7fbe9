"""Grasps per second of the sim cell on one core, per condition; or its memory over a long run.

Usage: python -m bench.sim_throughput [--grasps N] [--seed S]
       python -m bench.sim_throughput --rss-grasps 100000 [--checkpoints 20] [--switch-every 1000]
Runs in this single process (one core): observe + scripted decision + execute,
object refreshes included. With ``--rss-grasps`` it instead runs that many grasps,
switching condition every ``--switch-every`` grasps (all six in turn, so gripper
rebuilds are in the loop too), and prints the process's resident memory at
``--checkpoints`` evenly spaced points (the first after one switch cycle's warm-up
is not special-cased: every checkpoint is reported, growth is last minus first).
Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from drivers.sim.cell import SimCell
from drivers.sim.conditions import CONDITION_NAMES
from drivers.sim.config import SimConfig
from drivers.sim.scripted import ScriptedPolicy


def rss_mb() -> float:
    """Resident set size of this process, MiB (from /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def throughput(grasps: int, seed: int) -> dict[str, Any]:
    rates: dict[str, float] = {}
    success: dict[str, float] = {}
    with SimCell(SimConfig(split="train", seed=seed)) as cell:
        policy = ScriptedPolicy(cell.spec, np.random.default_rng(seed))
        for cond in CONDITION_NAMES:
            cell.set_condition(cond)
            wins = 0
            t0 = time.perf_counter()
            for _ in range(grasps):
                obs = cell.observe()
                res = cell.execute(policy.act(obs.image, cell.privileged()))
                wins += int(bool(res.outcome and res.outcome.success))
            dt = time.perf_counter() - t0
            rates[cond] = round(grasps / dt, 2)
            success[cond] = round(wins / grasps, 3)
            print(
                f"{cond:15s} {rates[cond]:6.1f} grasps/s  scripted success {success[cond]:.1%}",
                file=sys.stderr,
            )
    return {
        "grasps_per_s_per_core": rates,
        "grasps_per_condition": grasps,
        "scripted_success_train": success,
    }


def memory(grasps: int, checkpoints: int, switch_every: int, seed: int) -> dict[str, Any]:
    every = max(1, grasps // checkpoints)
    points: list[dict[str, float]] = []
    with SimCell(SimConfig(split="train", seed=seed)) as cell:
        policy = ScriptedPolicy(cell.spec, np.random.default_rng(seed))
        t0 = time.perf_counter()
        points.append({"grasps": 0, "rss_mb": round(rss_mb(), 1), "s": 0.0})
        print(f"{0:>8d} grasps  RSS {points[-1]['rss_mb']:8.1f} MiB", flush=True)
        for i in range(1, grasps + 1):
            if switch_every > 0 and (i - 1) % switch_every == 0:
                cell.set_condition(CONDITION_NAMES[((i - 1) // switch_every) % 6])
            obs = cell.observe()
            cell.execute(policy.act(obs.image, cell.privileged()))
            if i % every == 0 or i == grasps:
                s = time.perf_counter() - t0
                points.append({"grasps": i, "rss_mb": round(rss_mb(), 1), "s": round(s, 1)})
                print(
                    f"{i:>8d} grasps  RSS {points[-1]['rss_mb']:8.1f} MiB  {i / s:6.1f} grasps/s",
                    flush=True,
                )
        dt = time.perf_counter() - t0
    first, last = points[0]["rss_mb"], points[-1]["rss_mb"]
    after_first = points[1]["rss_mb"] if len(points) > 1 else first
    return {
        "bench": "sim_memory",
        "grasps": grasps,
        "switch_every": switch_every,
        "refresh_every": SimConfig().refresh_every,
        "rss_mb": points,
        "rss_growth_mb": round(last - first, 1),
        "rss_growth_after_first_checkpoint_mb": round(last - after_first, 1),
        "rss_max_mb": max(p["rss_mb"] for p in points),
        "grasps_per_s": round(grasps / dt, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--grasps", type=int, default=200, help="grasps per condition")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rss-grasps", type=int, default=0, help="run the memory bench instead")
    ap.add_argument("--checkpoints", type=int, default=20, help="RSS checkpoints (memory bench)")
    ap.add_argument(
        "--switch-every", type=int, default=1000, help="grasps per condition (memory bench)"
    )
    args = ap.parse_args()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.rss_grasps > 0:
        result = memory(args.rss_grasps, args.checkpoints, args.switch_every, args.seed)
    else:
        result = throughput(args.grasps, args.seed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
