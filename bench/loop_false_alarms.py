"""False alarms of the success-drop detector in the loop itself: the real agent, a real child.

Usage: python -m bench.loop_false_alarms [--runs 2] [--first-run 0] [--workers 2] [--base 300]
           [--baseline 5000] [--transparent 5000] [--opacity 0.5] [--arl0 1000]
           [--child DIR] [--out DIR]

Each run is the real :class:`agent.daemon.Daemon` in this process's child process, on the
real sim cell (test objects, 5 per set, refreshed every 20 grasps) with the real ONNX
policies and CEM: the shipped base policy serves ``--base`` grasps on baseline, then a
child bundle is promoted through the command socket (``promote`` with its directory:
validated, swapped in on probation against the base policy, then the detector references
the child's own record, the same path as a trained result after a fine-tune job). The child
serves ``--baseline`` grasps under the unchanged world, then the sim switches to transparent
objects at ``--opacity`` by itself (the schedule; the agent is told nothing) for
``--transparent`` grasps: at 0.5 (half see-through) a change that cost the default child
nothing (``bench/policy_eval.py``: 84.0% against 85.1% on baseline, 400 grasps; at the
default opacity of 0.1 it cost 19 points, and its alarms are real). The JSON reports both
success rates and the z of their difference, to verify.
``on_alarm = "alert"``: an alarm is published and the detector re-references, so every
alarm under the child is a false one and the chart keeps watching. Runs use different sim
seeds and go ``--workers`` at a time.

The child (``--child``; default: made once under ``--out``) is a fine-tune of the base policy
on 300 of its own baseline grasps (``robot-trainer base-data`` + ``robot-trainer finetune``,
lr 1e-4, the best held-out step): any validated bundle of the same spec will do.

Counted: alarms (``agent.alarm`` events of kind success_drop in the grasp log, placed at the
grasps finished when they were recorded) raised while the child serves, and the child's
monitored grasps: its grasps after the detector first armed (``reference_grasps`` grasps
of its record, probation included), less the ``reference_grasps`` after each alarm (the
chart recalibrates on them). Reported: monitored grasps per alarm with a 95%
interval (exact Poisson on the count), over the configured ARL0. Every run's outcome stream
is saved (``--out``/run-K/stream.json: success, policy, world condition per grasp) for
offline replay through the pure detector (``bench/replay_false_alarms.py``).

Last line of stdout: one JSON object.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent.config import config_from_dict
from agent.ctl import request
from agent.daemon import Daemon
from bench.flags import flags, parser
from drivers.sim.cell import SimCell
from drivers.sim.conditions import Condition
from drivers.sim.config import SimConfig, cell_config

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "policies" / "base"
REFERENCE = 200
"""detector.reference_grasps in the runs."""
TRAINER = [sys.executable, "-m", "trainer.cli"]


class SeveritySimCell(SimCell):
    """The sim cell, with the severity of the scheduled conditions set (the schedule itself
    switches conditions at their default severity)."""

    def __init__(self, config: SimConfig, severity: dict[str, dict[str, float]]) -> None:
        super().__init__(config)
        self._severity = severity

    def set_condition(self, name: str, params: dict[str, float] | None = None) -> Condition:
        return super().set_condition(
            name, params if params is not None else self._severity.get(name)
        )


def make_child(out: Path) -> Path:
    """A child bundle: the base policy fine-tuned a little on 300 of its own baseline grasps."""
    bundles = out / "job" / "bundles"
    if bundles.is_dir() and any(bundles.iterdir()):
        return next(bundles.iterdir())
    data = out / "data"
    if not (data / "index.json").exists():
        collect = ["base-data", "--out", str(data), "--grasps", "300", "--bundle", str(BASE)]
        subprocess.run(
            [*TRAINER, *collect, "--seed", "7", "--workers", "1"],
            check=True,
            cwd=ROOT,
        )
    args = {
        "max-steps": 40,
        "eval-every": 5,
        "patience": 8,
        "batch-size": 32,
        "lr": 0.0001,
        "holdout": 0.25,
        "max-eval": 128,
        "augment": "off",
        "min-gain": -1,
        "se-margin": 0,
        "prior-tolerance": 1,
        "min-auc": 0,
        "threads": 1,
        "device": "cpu",
        "shift-search": "false",
        "checkpoint-every": 20,
        "probe-steps": 0,
    }
    cmd = [*TRAINER, "finetune", "--parent", str(BASE), "--new", str(data)]
    cmd += ["--out", str(out / "job"), "--condition", "baseline"]
    for k, v in args.items():
        cmd += [f"--{k}", str(v)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return next(bundles.iterdir())


def one_run(
    k: int,
    out: Path,
    child: Path,
    base: int,
    baseline: int,
    transparent: int,
    arl0: float,
    opacity: float,
) -> dict[str, Any]:
    """One daemon on the sim: base, then the child on baseline, then on transparent."""
    run = out / f"run-{k}"
    run.mkdir(parents=True, exist_ok=True)
    change = base + baseline
    total = change + transparent
    cfg = config_from_dict(
        {
            "agent": {"data_dir": str(run / "agent"), "idle_sleep_s": 0.01, "max_grasps": total},
            "driver": {
                "type": "sim",
                "condition": "baseline",
                "seed": 1000 + k,
                "options": {"split": "test"},
                "sim": {"schedule": [[0, "baseline"], [change, "transparent"]]},
            },
            # the child is timed while the sim runs beside it on 2 shared cores
            "policy": {"bundle": str(BASE), "max_latency_factor": 20.0},
            "cem": {"iterations": 3},
            "grasp_log": {"store_images": False},
            "detector": {"arl0": arl0, "min_drop": 0.15, "reference_grasps": REFERENCE},
            "lifecycle": {"initial_condition": "baseline", "on_alarm": "alert"},
            "sockets": {
                "command_endpoint": "tcp://127.0.0.1:*",
                "event_endpoint": "tcp://127.0.0.1:*",
            },
        }
    )
    sim = cell_config(cfg.driver.settings)  # seed 1000 + k, baseline, the schedule, test split
    daemon = Daemon(cfg, SeveritySimCell(sim, {"transparent": {"opacity": opacity}}))
    th = threading.Thread(target=daemon.run, daemon=True)
    t0 = time.monotonic()
    th.start()
    offered = False
    while th.is_alive():
        if not offered and daemon.grasps >= base:
            reply = request(daemon.endpoints["commands"], "promote", {"id": str(child.resolve())})
            if not reply.get("ok"):
                raise RuntimeError(f"promote refused: {reply}")
            offered = True
        time.sleep(0.05)
    th.join()
    wall = time.monotonic() - t0
    return summarise(run, cfg.data_path(cfg.grasp_log.path), change, wall, k)


def summarise(run: Path, db: Path, change: int, wall: float, k: int) -> dict[str, Any]:
    """Read the grasp log: the stream (saved) and the alarms under the child."""
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT t_end, policy_id, success FROM grasps ORDER BY id").fetchall()
    events = conn.execute(
        "SELECT t, topic, data FROM events WHERE topic IN ('agent.alarm', 'agent.policy.probation')"
        " ORDER BY id"
    ).fetchall()
    conn.close()
    base_id = json.loads((BASE / "meta.json").read_text())["id"]
    t_end = [r[0] for r in rows]
    policy = [r[1] for r in rows]
    success = [int(r[2]) for r in rows]
    world = ["baseline" if i < change else "transparent" for i in range(len(rows))]
    (run / "stream.json").write_text(
        json.dumps({"success": success, "policy": policy, "world": world, "refresh_every": 20})
    )
    first_child = next(i for i, p in enumerate(policy) if p != base_id)
    alarms: list[dict[str, Any]] = []
    probation: dict[str, Any] = {}
    for t, topic, data in events:
        d = json.loads(data)
        at = sum(1 for x in t_end if x <= t)
        if topic == "agent.policy.probation":
            probation = {"verdict": d.get("verdict"), "grasps": d.get("grasps"), "at": at}
        elif d.get("kind") == "success_drop" and at > first_child:
            alarms.append({"at": at, "world": world[at - 1], "reference": d.get("reference")})
    armed = first_child + REFERENCE
    monitored = {
        "baseline": max(min(change, len(rows)) - armed, 0),
        "transparent": max(len(rows) - max(change, armed), 0),
    }
    for a in alarms:  # the chart recalibrates on the grasps after an alert: not monitored
        monitored[a["world"]] -= min(REFERENCE, len(rows) - a["at"])
    seg = {
        "baseline": success[first_child:change],
        "transparent": success[change:],
    }
    return {
        "run": k,
        "wall_s": round(wall, 1),
        "grasps": len(rows),
        "base_success": round(sum(success[:first_child]) / max(first_child, 1), 4),
        "child_from": first_child,
        "probation": probation,
        "monitored": monitored,
        "success": {w: [sum(s), len(s)] for w, s in seg.items()},
        "alarms": alarms,
    }


def _poisson_cdf(n: int, mu: float) -> float:
    term = total = math.exp(-mu)
    for i in range(1, n + 1):
        term *= mu / i
        total += term
    return total


def _solve(f: Any, lo: float, hi: float) -> float:
    for _ in range(200):  # f decreasing in mu: bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def poisson_interval(n: int) -> tuple[float, float]:
    """Exact (Garwood) 95% interval of a Poisson mean from the count n."""
    top = 10.0 * n + 20.0
    hi = _solve(lambda mu: _poisson_cdf(n, mu) - 0.025, 0.0, top)
    lo = 0.0 if n == 0 else _solve(lambda mu: _poisson_cdf(n - 1, mu) - 0.975, 0.0, top)
    return lo, hi


def per_alarm(monitored: int, alarms: int, arl0: float) -> dict[str, Any]:
    lo, hi = poisson_interval(alarms)
    est = monitored / alarms if alarms else math.inf
    return {
        "alarms": alarms,
        "monitored_grasps": monitored,
        "grasps_per_alarm": round(est, 1) if alarms else None,
        "interval_95": [round(monitored / hi, 1), round(monitored / lo, 1) if lo else None],
        "x_arl0": round(est / arl0, 3) if alarms else None,
        "x_arl0_interval_95": [
            round(monitored / hi / arl0, 3),
            round(monitored / lo / arl0, 3) if lo else None,
        ],
    }


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--first-run", type=int, default=0, help="runs K.. (sim seed 1000 + K)")
    ap.add_argument("--opacity", type=float, default=0.5, help="the transparent objects' opacity")
    flags(ap, runs=2, workers=2, base=300, baseline=5000, transparent=5000, arl0=1000.0)
    ap.add_argument("--child", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "loop_false_alarms")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    child = a.child or make_child(a.out / "child")
    t0 = time.monotonic()
    ks = range(a.first_run, a.first_run + a.runs)
    jobs = [(k, a.out, child, a.base, a.baseline, a.transparent, a.arl0, a.opacity) for k in ks]
    with mp.get_context("spawn").Pool(a.workers) as pool:
        runs = pool.starmap(one_run, jobs)
    for r in runs:
        print(json.dumps(r), flush=True)
    out: dict[str, Any] = {
        "bench": "loop_false_alarms",
        "arl0": a.arl0,
        "runs": a.runs,
        "first_run": a.first_run,
        "opacity": a.opacity,
    }
    total_m = total_a = 0
    for w in ("baseline", "transparent"):
        m = sum(r["monitored"][w] for r in runs)
        n = sum(1 for r in runs for x in r["alarms"] if x["world"] == w)
        s = [sum(r["success"][w][0] for r in runs), sum(r["success"][w][1] for r in runs)]
        out[w] = {**per_alarm(m, n, a.arl0), "child_success": round(s[0] / max(s[1], 1), 4)}
        total_m, total_a = total_m + m, total_a + n
    sb, nb = (sum(r["success"]["baseline"][i] for r in runs) for i in (0, 1))
    st, nt = (sum(r["success"]["transparent"][i] for r in runs) for i in (0, 1))
    pb, pt = sb / max(nb, 1), st / max(nt, 1)
    pooled = (sb + st) / max(nb + nt, 1)
    se = math.sqrt(max(pooled * (1 - pooled) * (1 / max(nb, 1) + 1 / max(nt, 1)), 1e-12))
    out["transparent_minus_baseline"] = {"diff": round(pt - pb, 4), "z": round((pt - pb) / se, 2)}
    out["all"] = per_alarm(total_m, total_a, a.arl0)
    out["grasps"] = sum(r["grasps"] for r in runs)
    out["child"] = child.name
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
