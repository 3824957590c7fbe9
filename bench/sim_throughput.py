"""Grasps per second of the sim cell on one core, per condition.

Usage: python bench/sim_throughput.py [--grasps N] [--seed S]
Runs in this single process (one core): observe + scripted decision + execute,
object refreshes included. Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

import numpy as np

from drivers.sim.cell import SimCell, SimConfig
from drivers.sim.conditions import CONDITION_NAMES
from drivers.sim.scripted import ScriptedPolicy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grasps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rates: dict[str, float] = {}
    success: dict[str, float] = {}
    with SimCell(SimConfig(split="train", seed=args.seed)) as cell:
        policy = ScriptedPolicy(cell.spec, np.random.default_rng(args.seed))
        for cond in CONDITION_NAMES:
            cell.set_condition(cond)
            wins = 0
            t0 = time.perf_counter()
            for _ in range(args.grasps):
                obs = cell.observe()
                res = cell.execute(policy.act(obs.image, cell.privileged()))
                wins += int(bool(res.outcome and res.outcome.success))
            dt = time.perf_counter() - t0
            rates[cond] = round(args.grasps / dt, 2)
            success[cond] = round(wins / args.grasps, 3)
            print(
                f"{cond:15s} {rates[cond]:6.1f} grasps/s  scripted success {success[cond]:.1%}",
                file=sys.stderr,
            )
    print(
        json.dumps(
            {
                "grasps_per_s_per_core": rates,
                "grasps_per_condition": args.grasps,
                "scripted_success_train": success,
            }
        )
    )


if __name__ == "__main__":
    main()
