"""False alarms and delays of the daemon's detector when grasps come in correlated sets.

Objects come in sets (a tote; the sim refreshes its 5 objects every 20 grasps) and a hard
set fails grasp after grasp, so outcomes are overdispersed: in the demo the variance of
20-grasp block means was 1.0x the binomial one on baseline and 1.9-3.3x after fine-tuning.
This bench runs the real :class:`agent.detector.SuccessDropDetector` (estimated reference,
grown reference, restart after each alarm with a fresh reference, as the daemon does after
marking a condition) on streams whose success rate is redrawn every ``--set-size`` grasps
from a Beta law with mean p0 and dispersion phi = 1 + (m - 1) rho (rho: the correlation of
two grasps of one set), each robot at a random phase of the sets. For each phi it compares
``block = 1`` (grasps assumed independent) with ``block = --block`` (the dispersion
estimated from the reference and the threshold raised by it), and reports the measured
grasps between false alarms against the configured ARL0, and the mean delay after a drop
of ``--drop`` at grasp ``--change-at`` (counted from the first monitored grasp).

Last stdout line: one JSON object. Progress on stderr. ~1-3 min on 2 cores with defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from agent.detector import SuccessDropDetector
from bench.flags import flags, parser


def clustered_stream(
    rng: np.random.Generator, n: int, rates: list[tuple[int, float]], phi: float, m: int
) -> np.ndarray:
    """``n`` outcomes; ``rates`` = [(from grasp, mean rate)]; each set of ``m`` grasps draws its
    rate from Beta with that mean and dispersion ``phi`` (phi = 1: independent grasps)."""
    rho = (phi - 1) / (m - 1)
    offset = int(rng.integers(m))
    out = np.empty(n, dtype=bool)
    i = 0
    while i < n:
        j = min(n, i + (m - offset if i == 0 else m))
        mean = [p for start, p in rates if start <= i][-1]
        if rho > 0:
            k = 1 / rho - 1
            p = rng.beta(mean * k, (1 - mean) * k)
        else:
            p = mean
        out[i:j] = rng.random(j - i) < p
        i = j
    return out


def false_alarms(
    args: argparse.Namespace, phi: float, block: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Grasps monitored per false alarm over ``--robots`` in-control streams."""
    monitored = alarms = 0
    spent = []
    for _ in range(args.robots):
        x = clustered_stream(rng, args.horizon, [(0, args.p0)], phi, args.set_size)
        det = SuccessDropDetector(args.arl0, args.min_drop, args.reference_grasps, block=block)
        for ok in x:
            was_calibrating = det.calibrating
            if det.update(bool(ok)) is not None:
                alarms += 1
                spent.append(det.phi)
                det.reset()
            elif not was_calibrating:
                monitored += 1
    return {
        "grasps_per_false_alarm": round(monitored / max(alarms, 1), 1),
        "ratio_to_arl0": round(monitored / max(alarms, 1) / args.arl0, 3),
        "false_alarms": alarms,
        "monitored": monitored,
    }


def delay(args: argparse.Namespace, phi: float, block: int, rng: np.random.Generator) -> float:
    """Mean grasps from a drop at ``--change-at`` monitored grasps to the alarm."""
    out = []
    for _ in range(args.delay_robots):
        start = args.reference_grasps + args.change_at
        rates = [(0, args.p0), (start, args.p0 - args.drop)]
        x = clustered_stream(rng, start + 5000, rates, phi, args.set_size)
        det = SuccessDropDetector(args.arl0, args.min_drop, args.reference_grasps, block=block)
        for i, ok in enumerate(x):
            if det.update(bool(ok)) is not None:
                if i >= start:  # false alarms before the change: restart, as the daemon
                    out.append(i - start + 1)
                    break
                det.reset(history=[bool(v) for v in x[max(0, i - 99) : i + 1]])
    return round(float(np.mean(out)), 1) if out else float("nan")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--robots", type=int, default=60, help="in-control streams per cell")
    ap.add_argument("--delay-robots", type=int, default=60, help="streams per delay cell")
    ap.add_argument("--horizon", type=int, default=10_000, help="grasps per in-control stream")
    ap.add_argument("--set-size", type=int, default=20, help="grasps per object set")
    ap.add_argument("--block", type=int, default=20, help="detector.block_grasps when on")
    ap.add_argument("--phis", default="1,2,3", help="true dispersions to simulate")
    flags(ap, arl0=1000.0, min_drop=0.15, reference_grasps=100, p0=0.75, drop=0.2)
    flags(ap, change_at=300, seed=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    t0 = time.monotonic()
    for phi in [float(v) for v in args.phis.split(",")]:
        for block in (1, args.block):
            fa = false_alarms(args, phi, block, rng)
            d = delay(args, phi, block, rng)
            row = {"phi": phi, "block": block, **fa, "delay": d}
            rows.append(row)
            print(f"[{time.monotonic() - t0:6.0f}s] {json.dumps(row)}", file=sys.stderr)
    print(
        json.dumps(
            {
                "bench": "detector_clustered",
                "arl0": args.arl0,
                "p0": args.p0,
                "drop": args.drop,
                "set_size": args.set_size,
                "reference_grasps": args.reference_grasps,
                "robots": args.robots,
                "horizon": args.horizon,
                "rows": rows,
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
