"""``robot-sim``: run the simulated cell without the agent.

Subcommands:
  demo       grasp with the scripted (or random) policy, printing a live success counter
  eval       success of the scripted/random policy per condition, with 95% intervals (JSON)
  snapshots  save one camera image per condition as PNG
  bridge     serve the cell over the robot bridge protocol (the reference bridge, docs/bridge.md)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from drivers.sim.cell import SimCell
from drivers.sim.conditions import CONDITION_NAMES, parse_param_args
from drivers.sim.config import SimConfig
from drivers.sim.scripted import RandomPolicy, ScriptedPolicy
from plumbing.extras import run_entry


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def run_policy(
    policy_name: str,
    condition: str,
    params: dict[str, float],
    grasps: int,
    seed: int,
    split: str = "test",
    progress: bool = False,
) -> dict[str, object]:
    """Grasp ``grasps`` times with a reference policy; return success, n and 95% interval."""
    cfg = SimConfig(split=split, seed=seed, condition=condition, condition_params=params)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed + 7919)
    wins = 0
    t0 = time.perf_counter()
    with SimCell(cfg) as cell:
        policy = (
            ScriptedPolicy(cell.spec, rng)
            if policy_name == "scripted"
            else RandomPolicy(cell.spec, rng)
        )
        for i in range(grasps):
            obs = cell.observe()
            result = cell.execute(policy.act(obs.image, cell.privileged()))
            wins += int(bool(result.outcome and result.outcome.success))
            if progress:
                rate = (time.perf_counter() - t0) / (i + 1)
                print(
                    f"\r{condition:15s} {policy_name:8s} grasp {i + 1:5d}/{grasps}"
                    f"  success {wins / (i + 1):6.1%}  ({1 / rate:5.1f} grasps/s)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if progress:
        print(file=sys.stderr)
    lo, hi = wilson(wins, grasps)
    return {
        "policy": policy_name,
        "condition": condition,
        "params": params,
        "split": split,
        "n": grasps,
        "success": wins / max(grasps, 1),
        "ci95": [round(lo, 4), round(hi, 4)],
    }


def cmd_demo(args: argparse.Namespace) -> int:
    res = run_policy(
        args.policy,
        args.condition,
        parse_param_args(args.param),
        args.grasps,
        args.seed,
        split=args.split,
        progress=True,
    )
    print(json.dumps(res))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    conditions = args.condition or list(CONDITION_NAMES)
    rows = []
    for cond in conditions:
        for pol in args.policy:
            rows.append(
                run_policy(pol, cond, {}, args.grasps, args.seed, split=args.split, progress=True)
            )
    print(json.dumps({"results": rows}))
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    import cv2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with SimCell(SimConfig(split="test", seed=args.seed)) as cell:
        for cond in CONDITION_NAMES:
            cell.set_condition(cond)
            img = cell.observe().image
            path = out / f"{cond}.png"
            big = cv2.resize(
                img,
                (img.shape[1] * args.scale, img.shape[0] * args.scale),
                interpolation=cv2.INTER_NEAREST,
            )
            cv2.imwrite(str(path), big[..., ::-1])
            print(path)
    return 0


def parse_schedule_arg(text: str) -> tuple[tuple[Any, ...], ...]:
    """``"0:baseline,300:harsh_lighting:intensity=0.5"`` -> ((0, "baseline"), (300,
    "harsh_lighting", {"intensity": 0.5})); see :mod:`drivers.sim.schedule` for the syntax."""
    from drivers.sim.schedule import parse_schedule_text

    try:
        return parse_schedule_text(text).entries
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_bridge(args: argparse.Namespace) -> int:
    import logging
    import threading

    import zmq

    from drivers.bridge.config import BridgeServerConfig
    from drivers.sim.bridge import install_stop_signals, serve_sim

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    sim = SimConfig(
        split=args.split,
        seed=args.seed,
        n_objects=args.objects,
        condition=args.condition,
        condition_params=parse_param_args(args.param),
        schedule=args.schedule,
    )
    server = BridgeServerConfig(
        endpoint=args.endpoint,
        robot_id=args.robot_id,
        heartbeat_s=args.heartbeat,
        curve_server_secret=args.curve_server_secret,
        curve_clients_dir=args.curve_clients_dir,
    )
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        serve_sim(sim, server, stop)
    except (ValueError, zmq.ZMQError) as exc:  # exposed without keys, port taken, bad endpoint
        print(f"robot-sim bridge: {args.endpoint}: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="robot-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="scripted grasping with a live success counter")
    d.add_argument("--policy", choices=["scripted", "random"], default="scripted")
    d.add_argument("--condition", choices=CONDITION_NAMES, default="baseline")
    d.add_argument("--param", action="append", default=[], help="severity override key=value")
    d.add_argument("--grasps", type=int, default=200)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--split", choices=["train", "test"], default="test")
    d.set_defaults(fn=cmd_demo)
    e = sub.add_parser("eval", help="reference policies per condition (JSON)")
    e.add_argument(
        "--policy", nargs="+", choices=["scripted", "random"], default=["scripted", "random"]
    )
    e.add_argument("--condition", nargs="*", choices=CONDITION_NAMES)
    e.add_argument("--grasps", type=int, default=200)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--split", choices=["train", "test"], default="test")
    e.set_defaults(fn=cmd_eval)
    s = sub.add_parser("snapshots", help="one PNG per condition")
    s.add_argument("--out", default="docs/img")
    s.add_argument("--seed", type=int, default=3)
    s.add_argument("--scale", type=int, default=2)
    s.set_defaults(fn=cmd_snapshots)
    b = sub.add_parser("bridge", help="serve the cell over the robot bridge protocol")
    b.add_argument("--endpoint", default="tcp://127.0.0.1:5570", help="ROUTER endpoint to bind")
    b.add_argument("--robot-id", default="sim", help="robot id announced in hello")
    b.add_argument("--condition", choices=CONDITION_NAMES, default="baseline")
    b.add_argument("--param", action="append", default=[], help="severity override key=value")
    b.add_argument(
        "--schedule",
        type=parse_schedule_arg,
        default=(),
        help="conditions by grasp count, each step COUNT:NAME[:key=value...], e.g. "
        "0:baseline,300:harsh_lighting:light_azimuth_deg=200",
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--objects", type=int, default=5, help="objects in the bin")
    b.add_argument("--split", choices=["train", "test", "all"], default="test")
    b.add_argument("--heartbeat", type=float, default=0.25, help="heartbeat interval, seconds")
    b.add_argument("--curve-server-secret", default="", help="key pair file (non-loopback)")
    b.add_argument("--curve-clients-dir", default="", help="authorised client keys (non-loopback)")
    b.set_defaults(fn=cmd_bridge)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``robot-sim``; every subcommand needs the [sim] extra (exit 2 without)."""
    args = build_parser().parse_args(argv)
    return run_entry("robot-sim", lambda: int(args.fn(args)), needs=("sim",))


if __name__ == "__main__":
    raise SystemExit(main())
