"""False-alarm rate and detection delay of the agent's success-drop detector.

Usage: python bench/detector.py [--streams N] [--arl0 A] [--min-drop D]

For each scenario p0 -> p1 the agent's detector is designed exactly as the
daemon does it (agent.detector.design_cusum with the configured ARL0 and
smallest drop worth detecting, reference p0). Over N simulated streams
(vectorised numpy) it measures: the mean grasps between false alarms at p0;
the mean detection delay when the rate is p1 from the first grasp (zero-state
ARL1); and the delay after a change at grasp 500 among streams not yet alarmed
(steady state). Next to it: a CUSUM optimally tuned for the true p1 whose
threshold gives the same *measured* false-alarm rate, simulated on the same
number of streams, and the asymptotic bound log(ARL0) / KL(p1 || p0).
Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from agent.detector import arl_markov, design_cusum, integer_steps, run_lengths

CHANGE_AT = 500


def kl(p1: float, p0: float) -> float:
    return p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))


def delays(
    down: int, up: int, h: int, p0: float, p1: float, n: int, rng: np.random.Generator, cap: int
) -> tuple[float, float]:
    zero = run_lengths(down, up, [h], p1, n, cap, rng)[0]
    steady = run_lengths(
        down, up, [h], p1, n, CHANGE_AT + cap, rng, change_at=CHANGE_AT, p_before=p0
    )[0]
    after = steady[steady > CHANGE_AT] - CHANGE_AT
    return float(zero.mean()), float(after.mean())


def scenario(p0: float, p1: float, arl0: float, min_drop: float, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    d = design_cusum(p0, min_drop, arl0)
    cap = int(30 * d.arl0)
    fa = run_lengths(d.down, d.up, [d.threshold], p0, n, cap, rng)[0]
    measured_arl0 = float(fa.mean())
    censored = int((fa >= cap).sum())
    zero, steady = delays(d.down, d.up, d.threshold, p0, p1, n, rng, cap)

    # optimally tuned CUSUM: LLR for the true p1, threshold matched to the measured ARL0
    od, ou = integer_steps(p0, p1)
    lo, hi = 0, ou
    while arl_markov(od, ou, hi, p0) < measured_arl0:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if arl_markov(od, ou, mid, p0) >= measured_arl0:
            hi = mid
        else:
            lo = mid
    # the ARL0 of a discrete chart moves in steps: take the threshold closest to the measured one
    if lo > 0 and abs(math.log(arl_markov(od, ou, lo, p0) / measured_arl0)) < abs(
        math.log(arl_markov(od, ou, hi, p0) / measured_arl0)
    ):
        hi = lo
    opt_fa = run_lengths(od, ou, [hi], p0, n, cap, rng)[0]
    opt_zero, opt_steady = delays(od, ou, hi, p0, p1, n, rng, cap)
    return {
        "p0": p0,
        "p1": p1,
        "configured_arl0": arl0,
        "min_drop": min_drop,
        "design": {
            "p1": d.p1,
            "down": d.down,
            "up": d.up,
            "threshold": d.threshold,
            "threshold_nats": round(d.threshold_nats, 3),
            "exact_arl0": round(d.arl0, 1),
        },
        "measured_arl0": round(measured_arl0, 1),
        "censored_streams": censored,
        "delay_zero_state": round(zero, 2),
        "delay_after_change_at_500": round(steady, 2),
        "exact_arl1": round(arl_markov(d.down, d.up, d.threshold, p1), 2),
        "optimal": {
            "threshold": hi,
            "exact_arl0": round(arl_markov(od, ou, hi, p0), 1),
            "measured_arl0": round(float(opt_fa.mean()), 1),
            "delay_zero_state": round(opt_zero, 2),
            "delay_after_change_at_500": round(opt_steady, 2),
        },
        "bound_log_arl0_over_kl": round(math.log(measured_arl0) / kl(p1, p0), 2),
        "delay_ratio_to_optimal": round(zero / opt_zero, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--arl0", type=float, default=1000.0)
    ap.add_argument("--min-drop", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    out = []
    for p0, p1 in ((0.86, 0.50), (0.90, 0.75)):
        r = scenario(p0, p1, args.arl0, args.min_drop, args.streams, args.seed)
        out.append(r)
        print(
            f"{p0:.2f} -> {p1:.2f}: ARL0 measured {r['measured_arl0']} "
            f"(exact {r['design']['exact_arl0']}); delay {r['delay_zero_state']} "
            f"(after change {r['delay_after_change_at_500']}); optimal CUSUM "
            f"{r['optimal']['delay_zero_state']} at ARL0 {r['optimal']['measured_arl0']}; "
            f"bound {r['bound_log_arl0_over_kl']}"
        )
    print(
        json.dumps(
            {
                "bench": "detector",
                "streams": args.streams,
                "seconds": round(time.time() - t0, 1),
                "scenarios": out,
            }
        )
    )


if __name__ == "__main__":
    main()
