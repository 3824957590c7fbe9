"""Hot-swap under load: decisions at >= 200 Hz on the control thread while 20 bundles are
validated and loaded off-thread (agent/loader.py) and swapped in by reference.

Usage: python -m bench.swap [--bundles 20] [--rate 200] [--cem-iterations 2] [--work DIR]

1. Makes ``--bundles`` distinct valid bundles (not timed): the shipped base policy's network
   with its weights perturbed (a different seed each, 0.1% of each tensor's scale),
   re-exported by ``trainer.export.make_bundle``, so each has its own content id.
2. Serves the base policy the way the daemon's control thread does: ``Policy.act`` on
   recorded sim images at a fixed rate (deadline pacing), checking each decision (finite Q in
   [0, 1], finite action, no PolicyFault); between two decisions it polls the
   ``PolicyLoader`` and, when a bundle is ready, swaps the reference, keeps the previous one
   as the warm fallback and drops the one before (as ``agent.policies.WarmPolicies.keep``).
3. All bundles are submitted at once to the loader thread (full validation, probe on the sim
   images, import into a store, warm-up; the latency comparison with the serving policy only
   with ``--latency-check``). The control thread is pinned to the first CPU, the loader and
   the reaper to the others (``--no-pin``: no pinning), as a deployment would isolate it.

Reports: decisions, failed decisions, achieved rate, decision latency p50/p99, the control
thread's pause per swap (poll + swap + hand-off of the retired policy, p50/p99/max, and the
max of each part), the same poll when nothing is ready (the machine's noise floor), the gap
between decisions around a swap against the usual gap, loader time per bundle.
Last stdout line: one JSON object.

The retired policy (the one before the warm fallback) is released on a reaper thread:
releasing it on the control thread (``--drop-on-control``, what dropping the last
reference there does) destroys its ONNX Runtime sessions there, measured at 2-10 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle import validate_bundle
from agent.cem import CemParams
from agent.config import PolicyConfig
from agent.loader import PolicyLoader
from agent.policies import WarmPolicies
from agent.policy import Policy, PolicyFault, load_policy
from agent.spec import DEFAULT_SPEC

ROOT = Path(__file__).resolve().parents[1]
CATCH_UP_S = 0.1
"""A late decision is followed at once by the next (the rate holds) unless the loop is this
far behind its schedule (then the schedule restarts from now)."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_bundles(base: Path, n: int, dest: Path) -> list[Path]:
    """``n`` distinct valid bundles from ``base`` with perturbed weights (reused if present)."""
    import torch

    from trainer.export import load_qnet, make_bundle

    parent = validate_bundle(base)
    out: list[Path] = []
    for i in range(n):
        root = dest / f"b{i:02d}"
        done = [p for p in root.glob("*") if (p / "meta.json").is_file()] if root.is_dir() else []
        if done:
            out.append(done[0])
            continue
        net = load_qnet(parent).eval()
        gen = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for t in net.parameters():
                scale = float(t.abs().mean()) or 1.0
                t.add_(torch.randn(t.shape, generator=gen) * scale * 1e-3)
        meta = {"condition": "bench-swap", "training": {"kind": "perturbed", "seed": 1000 + i}}
        out.append(make_bundle(net, meta, root, parent_id=parent.id).path)
    return out


def sim_images(n: int) -> list[np.ndarray]:
    from drivers.sim.cell import SimCell
    from drivers.sim.config import SimConfig

    rng = np.random.default_rng(0)
    images = []
    with SimCell(SimConfig(split="test", seed=3)) as cell:
        for _ in range(n):
            images.append(cell.observe().image)
            cell.execute(rng.uniform(DEFAULT_SPEC.low, DEFAULT_SPEC.high).astype(np.float32))
    return images


def _reap(q: queue.SimpleQueue[Policy | None]) -> None:
    """Release retired policies (their ONNX Runtime sessions) off the control thread: each is
    held a moment first, so the control thread's own reference is surely gone by then."""
    while (item := q.get()) is not None:
        time.sleep(0.05)
        del item  # the last reference: the sessions are destroyed on this thread


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run(
    bundles: list[Path],
    base: Path,
    images: list[np.ndarray],
    rate: float,
    cem: CemParams,
    store: Path,
    tail_s: float,
    drop_off_thread: bool,
    latency_check: bool,
    pin: bool,
) -> dict[str, Any]:
    pcfg = PolicyConfig()
    cpus = sorted(os.sched_getaffinity(0))
    pinned = pin and len(cpus) >= 2
    if pinned:  # threads started from here on inherit this: the loader and the reaper
        os.sched_setaffinity(0, cpus[1:])
    active: Policy = load_policy(validate_bundle(base), pcfg, cem, images)
    fallback: Policy | None = None
    loader = PolicyLoader(store, DEFAULT_SPEC, pcfg, cem, probe_images=lambda: images)
    loader.start()
    warm = WarmPolicies()
    warm.put(active)
    reaper: queue.SimpleQueue[Policy | None] | None = None
    if drop_off_thread:
        reaper = queue.SimpleQueue()
        threading.Thread(target=_reap, args=(reaper,), name="reaper", daemon=True).start()
    if pinned:  # the control thread (Linux: affinity is per thread) gets the first CPU
        os.sched_setaffinity(0, cpus[:1])
    period = 1.0 / rate
    latencies: list[float] = []
    gaps: list[float] = []
    swap_gaps: list[float] = []
    pauses: list[float] = []
    parts: list[tuple[float, float, float]] = []
    idle_polls: list[float] = []
    served_ids: set[str] = {active.id}
    failed: list[str] = []
    refused: list[str] = []
    late = 0
    decisions = 0
    swapped = 0
    t_submit = time.perf_counter()
    for b in bundles:
        latency = active.validated_latency_s if latency_check else None
        loader.submit(b, b.name, active_latency_s=latency)
    k = 0
    start = time.perf_counter()
    next_t = start
    last_end: float | None = None
    swapped_since_last = False
    done_at: float | None = None
    while True:
        now = time.perf_counter()
        if done_at is not None and now - done_at >= tail_s:
            break
        if now - start > 300:
            failed.append("timed out waiting for the loader")
            break
        # -- one decision, as the control thread runs it
        image = images[k % len(images)]
        k += 1
        try:
            d = active.act(image)
            ok = math.isfinite(d.q) and 0.0 <= d.q <= 1.0 and bool(np.all(np.isfinite(d.action)))
            if not ok:
                failed.append(f"bad decision from {active.id}: q={d.q}")
            latencies.append(d.latency_s)
        except (PolicyFault, ValueError) as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
        decisions += 1
        end = time.perf_counter()
        if last_end is not None:
            (swap_gaps if swapped_since_last else gaps).append(end - last_end)
        last_end = end
        swapped_since_last = False
        # -- between decisions: collect a loaded policy and swap the reference
        t0 = time.perf_counter()
        res = loader.poll()
        if res is not None:
            t1 = time.perf_counter()
            if res.policy is None:
                refused.append(f"{res.source}: {res.reason} {res.error}")
            else:
                if reaper is not None:  # the daemon's path: agent.policies.WarmPolicies
                    warm.put(res.policy)
                    warm.keep(res.policy.id, active.id)  # the one before is reaped off-thread
                    fallback, active = active, res.policy
                    t2 = time.perf_counter()
                else:
                    old, fallback, active = fallback, active, res.policy
                    t2 = time.perf_counter()
                    del old  # released here, on the control thread
                served_ids.add(active.id)
                swapped += 1
                parts.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
            pauses.append(time.perf_counter() - t0)
            swapped_since_last = True
            if swapped + len(refused) == len(bundles):
                done_at = time.perf_counter()
        else:
            idle_polls.append(time.perf_counter() - t0)
        # -- pace
        next_t += period
        wait = next_t - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            late += 1
            if wait < -CATCH_UP_S:
                next_t = time.perf_counter()  # too far behind: do not burst to catch up
    elapsed = time.perf_counter() - start
    loader_s = (done_at or time.perf_counter()) - t_submit
    loader.close()
    if reaper is not None:
        reaper.put(None)
    return {
        "bundles": len(bundles),
        "swaps": swapped,
        "refused": len(refused),
        "refusals": refused[:5],
        "distinct_policies_served": len(served_ids),
        "decisions": decisions,
        "failed_decisions": len(failed),
        "failures": failed[:5],
        "target_hz": rate,
        "achieved_hz": round(decisions / elapsed, 1),
        "late_decisions": late,
        "decision_ms_p50": round(pct(latencies, 50) * 1e3, 3),
        "decision_ms_p99": round(pct(latencies, 99) * 1e3, 3),
        "swap_pause_ms_p50": round(pct(pauses, 50) * 1e3, 4),
        "swap_pause_ms_p99": round(pct(pauses, 99) * 1e3, 4),
        "swap_pause_ms_max": round(max(pauses) * 1e3, 4) if pauses else None,
        "idle_poll_ms_p99": round(pct(idle_polls, 99) * 1e3, 4),
        "idle_poll_ms_max": round(max(idle_polls) * 1e3, 4) if idle_polls else None,
        "swap_parts_ms_max": [round(max(p[i] for p in parts) * 1e3, 4) for i in range(3)]
        if parts
        else None,
        "gap_ms_p99_usual": round(pct(gaps, 99) * 1e3, 3),
        "gap_ms_p99_after_swap": round(pct(swap_gaps, 99) * 1e3, 3),
        "loader_s_per_bundle": round(loader_s / max(1, len(bundles)), 3),
        "seconds": round(elapsed, 2),
        "drop": "reaper thread" if drop_off_thread else "control thread",
        "pinned": pinned,
        "latency_check": latency_check,
        "cem": {"samples": cem.samples, "elites": cem.elites, "iterations": cem.iterations},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=int, default=20, help="bundles swapped in")
    ap.add_argument("--rate", type=float, default=200.0, help="decisions per second")
    ap.add_argument("--cem-iterations", type=int, default=CemParams().iterations)
    ap.add_argument("--base", type=Path, default=ROOT / "policies" / "base")
    ap.add_argument("--work", type=Path, default=None, help="keep the bundles here (reused)")
    ap.add_argument("--images", type=int, default=8, help="sim images decided on and probed")
    ap.add_argument("--tail", type=float, default=1.0, help="seconds served after the last swap")
    ap.add_argument(
        "--switch-interval-ms",
        type=float,
        default=sys.getswitchinterval() * 1e3,
        help="Python's GIL switch interval (default: the interpreter's, 5 ms): the longest a"
        " thread waits for the GIL while another runs Python code",
    )
    ap.add_argument(
        "--drop-on-control",
        action="store_true",
        help="release the retired policy on the control thread (default: a reaper thread)",
    )
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the control thread to the first CPU and the loader to the others",
    )
    ap.add_argument(
        "--latency-check",
        action="store_true",
        help="compare each bundle's warm latency with the serving policy's (the daemon does;"
        " off by default: measured beside 200 decisions/s it reads contention, not the model)",
    )
    args = ap.parse_args()
    sys.setswitchinterval(args.switch_interval_ms / 1e3)
    tmp = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    work = args.work or tmp / "bundles"
    try:
        t0 = time.perf_counter()
        bundles = make_bundles(args.base, args.bundles, work)
        ids = {json.loads((b / "meta.json").read_text())["id"] for b in bundles}
        log(f"{len(bundles)} bundles ({len(ids)} distinct ids) in {time.perf_counter() - t0:.1f} s")
        images = sim_images(args.images)
        cem = CemParams(iterations=args.cem_iterations)
        res = run(
            bundles,
            args.base,
            images,
            args.rate,
            cem,
            tmp / "store",
            args.tail,
            not args.drop_on_control,
            args.latency_check,
            not args.no_pin,
        )
        res["distinct_bundle_ids"] = len(ids)
        res["switch_interval_ms"] = args.switch_interval_ms
        ok = (
            res["failed_decisions"] == 0
            and res["swaps"] == args.bundles
            and res["swap_pause_ms_p99"] <= 1.0
            and res["achieved_hz"] >= args.rate * 0.99
        )
        res["pass"] = ok
        log(
            f"{res['swaps']} swaps, {res['decisions']} decisions at {res['achieved_hz']} Hz, "
            f"{res['failed_decisions']} failed; swap pause p99 {res['swap_pause_ms_p99']} ms"
        )
        print(json.dumps(res))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
