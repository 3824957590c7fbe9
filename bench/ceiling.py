"""Physical ceiling of a challenge: can any grasp lift something in each bin at all?

Usage: python -m bench.ceiling [--condition extend_gripper] [--scenes 200] [--seed 7000]
                               [--bundle DIR ...] [--workers 2] [--quick]

For each scene (a fresh bin of 5 test objects, ``SimCell.reset(seed)``: the
same objects at the same poses under every condition) and each of baseline
and ``--condition``:

- **liftable objects**: per visible object, privileged candidate grasps from
  the simulator's segmentation, tried one at a time on the *same* bin (the
  world is rebuilt from the seed before every try, so every try sees the
  identical scene): the scripted grasp (centroid, closing across the
  principal axis), then the perpendicular yaw, +-45 degrees and +-1 cm along
  the closing axis; the object is liftable when any of them lifts it.
- **oracle**: the share of bins with at least one liftable object: an upper
  bound on what a single-shot policy can reach (it can only do better by
  finding a grasp outside the candidate set).
- **scripted**: the share of the scripted grasps (first candidate per object)
  that lift: how forgiving the physics is per object; and the share of bins
  where the scripted grasp lifts at least one object (a policy that grasps
  like the scripted one but always picks the right object).
- **policies** (``--bundle``, default the shipped base policy): one grasp per
  scene, served as the daemon serves it (ONNX Runtime + CEM 64/6/3).

Progress on stderr; the last stdout line is one JSON object with every figure,
its N and Wilson 95% interval.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

from drivers.sim.cli import wilson
from drivers.sim.conditions import CONDITION_NAMES

ROOT = Path(__file__).resolve().parents[1]
CEM_ITERATIONS = 3
JITTER_M = 0.01


def candidates(truth: Any, spec: Any, min_pixels: int = 3) -> list[list[Any]]:
    """Per visible object: the scripted grasp, then the perpendicular yaw, +-45 degrees and
    +-1 cm along the closing axis (normalised actions)."""
    from drivers.sim.scripted import principal_yaw

    out: list[list[Any]] = []
    for body in truth.object_bodies:
        mask = truth.seg == body
        if int(mask.sum()) < min_pixels:
            continue
        xs, ys = truth.floor_x[mask], truth.floor_y[mask]
        cx, cy = float(xs.mean()), float(ys.mean())
        yaw = principal_yaw(xs - cx, ys - cy)
        yaw = 0.0 if yaw is None else yaw
        # Fingers close along yaw + 90 degrees: jitter along that axis.
        ux, uy = -math.sin(yaw), math.cos(yaw)
        out.append(
            [
                spec.from_metric(cx, cy, yaw),
                spec.from_metric(cx, cy, yaw + math.pi / 2),
                spec.from_metric(cx, cy, yaw + math.pi / 4),
                spec.from_metric(cx, cy, yaw - math.pi / 4),
                spec.from_metric(cx + JITTER_M * ux, cy + JITTER_M * uy, yaw),
                spec.from_metric(cx - JITTER_M * ux, cy - JITTER_M * uy, yaw),
            ]
        )
    return out


def run_scenes(args: tuple[list[int], str, list[str], int]) -> list[dict[str, Any]]:
    """Every figure for the scenes ``seeds`` under ``condition`` (one process)."""
    seeds, condition, bundles, per_object = args
    from agent.bundle import validate_bundle
    from agent.config import CemConfig
    from agent.policy import load_offline
    from drivers.sim.cell import SimCell
    from drivers.sim.config import SimConfig

    cem = CemConfig(samples=64, iterations=CEM_ITERATIONS, init_std=0.5)
    policies = [load_offline(validate_bundle(Path(b)), cem) for b in bundles]
    rows: list[dict[str, Any]] = []
    with SimCell(SimConfig(split="test", seed=seeds[0], condition=condition)) as cell:
        for s in seeds:
            row: dict[str, Any] = {"seed": s, "policies": [], "scripted": [], "liftable": []}
            for pol in policies:
                cell.reset(seed=s)
                res = cell.execute(pol.act(cell.observe().image).action).outcome
                row["policies"].append(bool(res and res.success))
            cell.reset(seed=s)
            cell.observe()
            tries = 0
            for grasps in candidates(cell.privileged(), cell.spec):
                lifted = False
                for i, a in enumerate(grasps[:per_object]):
                    cell.reset(seed=s)
                    cell.observe()
                    res = cell.execute(a).outcome
                    tries += 1
                    lifted = bool(res and res.success)
                    if i == 0:
                        row["scripted"].append(lifted)
                    if lifted:
                        break
                row["liftable"].append(lifted)
            row["tries"] = tries
            rows.append(row)
    return rows


def figure(wins: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(wins, n)
    return {"success": round(wins / max(n, 1), 4), "n": n, "ci95": [round(lo, 4), round(hi, 4)]}


def measure(
    condition: str, seeds: list[int], bundles: list[str], workers: int, per_object: int
) -> dict[str, Any]:
    """Oracle, scripted and policy figures for one condition over ``seeds``."""
    t0 = time.time()
    chunks = [seeds[i::workers] for i in range(workers) if seeds[i::workers]]
    rows: list[dict[str, Any]] = []
    with mp.get_context("spawn").Pool(len(chunks)) as pool:
        for part in pool.imap_unordered(
            run_scenes, [(c, condition, bundles, per_object) for c in chunks]
        ):
            rows += part
    n = len(rows)
    scripted = [ok for r in rows for ok in r["scripted"]]
    liftable = [ok for r in rows for ok in r["liftable"]]
    out = {
        "condition": condition,
        "oracle": figure(sum(any(r["liftable"]) for r in rows), n),
        "liftable_objects": figure(sum(liftable), len(liftable)),
        "scripted_per_object": figure(sum(scripted), len(scripted)),
        "scripted_best_object": figure(sum(any(r["scripted"]) for r in rows), n),
        "mean_tries": round(sum(r["tries"] for r in rows) / max(n, 1), 2),
        "policies": {
            b: figure(sum(r["policies"][i] for r in rows), n) for i, b in enumerate(bundles)
        },
        "wall_s": round(time.time() - t0, 1),
    }
    print(f"[{time.strftime('%H:%M:%S')}] {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--condition", choices=CONDITION_NAMES[1:], default="extend_gripper")
    ap.add_argument("--scenes", type=int, default=200, help="bins per condition")
    ap.add_argument("--seed", type=int, default=7000, help="seed of the first bin")
    ap.add_argument("--bundle", action="append", default=[], help="policies served per bin")
    ap.add_argument("--per-object", type=int, default=6, help="candidate grasps per object (<= 6)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 bins, 1 worker (the test suite)")
    args = ap.parse_args()
    bundles = args.bundle or [str(ROOT / "policies" / "base")]
    if args.quick:
        args.scenes, args.workers, args.per_object = 2, 1, 2
    seeds = list(range(args.seed, args.seed + args.scenes))
    res = {
        "scenes": args.scenes,
        "seed": args.seed,
        "per_object": args.per_object,
        "cem_iterations": CEM_ITERATIONS,
        "baseline": measure("baseline", seeds, bundles, args.workers, args.per_object),
        args.condition: measure(args.condition, seeds, bundles, args.workers, args.per_object),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
