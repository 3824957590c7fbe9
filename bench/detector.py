"""False-alarm rate and detection delay of the agent's success-drop detector.

Usage: python bench/detector.py [--streams N] [--arl0 A] [--min-drop D] [--reference-grasps R]

Two parts, for each scenario p0 -> p1:

1. "estimated" (how the daemon runs it): each of N simulated robots estimates p0 from its
   own first R grasps (``detector.reference_grasps``, default 100) and tunes its chart from
   those counts with ``agent.detector.design_from_counts`` (the daemon's rule), then runs
   ``--horizon-x`` x ARL0 in-control grasps, restarting at 0 after each alarm as the daemon
   does. Measured: grasps between false alarms = all monitored grasps / all alarms (the
   rate a robot sees over its references, and a fleet's), next to the exact figure (the
   Markov chain averaged over the binomial reference counts) and the spread of a single
   reference's own ARL0 (10/50/90% quantiles over references; their mean, the mean run
   length to a first alarm, is dominated by the rare references that underestimate p0 and
   is reported for completeness). Then the mean delay after a
   drop to p1 at grasp 500 (steady state) and right after the reference (zero state).
   The same for the previous rule (a chart tuned as if the estimate were exact), and a
   check that the real ``SuccessDropDetector`` class, fed grasp by grasp, agrees.
2. "known": the chart designed for the true p0 (``design_cusum``), its measured ARL0 and
   delay against a CUSUM optimally tuned for the true p1 at the same measured ARL0, and the
   asymptotic bound log(ARL0) / KL(p1 || p0).

Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from agent.detector import (
    CusumDesign,
    SuccessDropDetector,
    arl_curve,
    arl_markov,
    design_cusum,
    design_from_counts,
    integer_steps,
    run_lengths,
)
from agent.runlength import simulate_streams

CHANGE_AT = 500
SCENARIOS = ((0.86, 0.50), (0.90, 0.75))


def kl(p1: float, p0: float) -> float:
    return p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))


# -- part 1: p0 estimated from the robot's own reference, as the daemon does ---------------------
def plugin_design(s: int, n: int, min_drop: float, arl0: float) -> CusumDesign:
    """The previous rule: the chart for a known p0, fed the Laplace estimate."""
    return design_cusum((s + 1) / (n + 2), min_drop, arl0)


def binomial_weights(n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    s = np.arange(n + 1)
    logw = np.array(
        [
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + k * math.log(p)
            + (n - k) * math.log1p(-p)
            for k in s
        ]
    )
    w = np.exp(logw)
    keep = w > 1e-9
    return s[keep], w[keep] / w[keep].sum()


def exact_over_references(
    rule: Any, p0: float, n: int, min_drop: float, arl0: float
) -> dict[str, float]:
    """Exact in-control figures averaged over the reference counts s ~ Binomial(n, p0)."""
    counts, weights = binomial_weights(n, p0)
    arls = []
    for s in counts:
        d = rule(int(s), n, min_drop, arl0)
        arls.append(float(arl_curve(d.down, d.up, d.threshold, [p0])[0, -1]))
    a = np.array(arls)
    order = np.argsort(a)
    cdf = np.cumsum(weights[order])

    def q(f: float) -> float:
        return float(a[order][min(np.searchsorted(cdf, f), a.size - 1)])

    return {
        "grasps_between_false_alarms": float(1.0 / (weights / a).sum()),
        "mean_first_alarm": float((weights * a).sum()),
        "reference_arl0_q10": q(0.1),
        "reference_arl0_q50": q(0.5),
        "reference_arl0_q90": q(0.9),
    }


def simulate_rule(
    rule: Any, p0: float, p1: float, n: int, min_drop: float, arl0: float, args: argparse.Namespace
) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    robots = args.streams
    counts = rng.binomial(n, p0, size=robots)  # each robot's reference: s successes of n
    designs = {int(s): rule(int(s), n, min_drop, arl0) for s in np.unique(counts)}
    down = np.array([designs[int(s)].down for s in counts])
    up = np.array([designs[int(s)].up for s in counts])
    h = np.array([designs[int(s)].threshold for s in counts])
    horizon = int(args.horizon_x * arl0)
    run = simulate_streams(down, up, h, p0, horizon, rng)
    alarms = int(run.alarms.sum())
    measured = robots * horizon / max(alarms, 1)
    steady = simulate_streams(down, up, h, p0, CHANGE_AT + horizon, rng, CHANGE_AT, p1)
    zero = simulate_streams(down, up, h, p0, horizon, rng, 0, p1)
    exact = exact_over_references(rule, p0, n, min_drop, arl0)
    return {
        "grasps_between_false_alarms": round(measured, 1),
        "ratio_to_configured": round(measured / arl0, 3),
        "false_alarms": alarms,
        "monitored_grasps": robots * horizon,
        "exact_grasps_between_false_alarms": round(exact["grasps_between_false_alarms"], 1),
        "reference_arl0_q10_q50_q90": [round(exact[f"reference_arl0_q{q}"]) for q in (10, 50, 90)],
        "exact_mean_first_alarm_over_references": round(exact["mean_first_alarm"], 1),
        "mean_delay_after_change_at_500": round(float(steady.delay.mean()), 2),
        "mean_delay_zero_state": round(float(zero.delay.mean()), 2),
        "censored_delays": int((steady.delay >= horizon).sum() + (zero.delay >= horizon).sum()),
        "threshold_median": float(np.median(h)),
    }


def class_check(
    p0: float, n: int, min_drop: float, arl0: float, robots: int, grasps: int, seed: int
) -> dict[str, Any]:
    """The real SuccessDropDetector fed grasp by grasp (reference, then in-control grasps),
    against the exact expectation for the same robots' references."""
    rng = np.random.default_rng(seed + 1)
    alarms, expected = 0, 0.0
    for _ in range(robots):
        det = SuccessDropDetector(arl0, min_drop, n)
        for x in rng.random(n) < p0:
            det.update(bool(x))
        d = det.design
        assert d is not None
        expected += grasps / float(arl_curve(d.down, d.up, d.threshold, [p0])[0, -1])
        alarms += sum(det.update(bool(x)) is not None for x in rng.random(grasps) < p0)
    return {
        "robots": robots,
        "grasps_each": grasps,
        "false_alarms": alarms,
        "expected_false_alarms_for_these_references": round(expected, 1),
        "grasps_between_false_alarms": round(robots * grasps / max(alarms, 1), 1),
    }


def estimated_scenario(p0: float, p1: float, args: argparse.Namespace) -> dict[str, Any]:
    n, drop, arl0 = args.reference_grasps, args.min_drop, args.arl0
    out: dict[str, Any] = {"p0": p0, "p1": p1, "configured_arl0": arl0, "reference_grasps": n}
    t = time.perf_counter()
    out["daemon_rule"] = simulate_rule(design_from_counts, p0, p1, n, drop, arl0, args)
    out["previous_rule_plugin"] = simulate_rule(plugin_design, p0, p1, n, drop, arl0, args)
    if args.class_check_robots:
        out["class_check"] = class_check(
            p0, n, drop, arl0, args.class_check_robots, int(3 * arl0), args.seed
        )
    out["seconds"] = round(time.perf_counter() - t, 1)
    return out


# -- part 2: p0 known ----------------------------------------------------------------------------
def delays(
    down: int, up: int, h: int, p0: float, p1: float, n: int, rng: np.random.Generator, cap: int
) -> tuple[float, float]:
    zero = run_lengths(down, up, [h], p1, n, cap, rng)[0]
    steady = run_lengths(
        down, up, [h], p1, n, CHANGE_AT + cap, rng, change_at=CHANGE_AT, p_before=p0
    )[0]
    after = steady[steady > CHANGE_AT] - CHANGE_AT
    return float(zero.mean()), float(after.mean())


def known_scenario(p0: float, p1: float, arl0: float, min_drop: float, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    d = design_cusum(p0, min_drop, arl0)
    cap = int(30 * d.arl0)
    fa = run_lengths(d.down, d.up, [d.threshold], p0, n, cap, rng)[0]
    measured_arl0 = float(fa.mean())
    censored = int((fa >= cap).sum())
    zero, steady = delays(d.down, d.up, d.threshold, p0, p1, n, rng, cap)

    # optimally tuned CUSUM: LLR for the true p1, threshold matched to the measured ARL0
    od, ou = integer_steps(p0, p1)
    curve = arl_curve(od, ou, 4096, [p0])[0]
    hi = int(np.searchsorted(curve, measured_arl0))
    # the ARL0 of a discrete chart moves in steps: take the threshold closest to the measured one
    if hi > 1 and abs(math.log(curve[hi - 1] / measured_arl0)) < abs(
        math.log(curve[hi] / measured_arl0)
    ):
        hi -= 1
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
            "exact_arl0": round(float(curve[hi]), 1),
            "measured_arl0": round(float(opt_fa.mean()), 1),
            "delay_zero_state": round(opt_zero, 2),
            "delay_after_change_at_500": round(opt_steady, 2),
        },
        "bound_log_arl0_over_kl": round(math.log(measured_arl0) / kl(p1, p0), 2),
        "delay_ratio_to_optimal": round(zero / opt_zero, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--streams", type=int, default=10000, help="simulated robots / streams")
    ap.add_argument("--arl0", type=float, default=1000.0, help="configured grasps per false alarm")
    ap.add_argument("--min-drop", type=float, default=0.15)
    ap.add_argument("--reference-grasps", type=int, default=100, help="detector.reference_grasps")
    ap.add_argument("--horizon-x", type=float, default=10.0, help="in-control grasps / ARL0")
    ap.add_argument("--class-check-robots", type=int, default=100, help="0: skip the check")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    estimated, known = [], []
    for p0, p1 in SCENARIOS:
        e = estimated_scenario(p0, p1, args)
        estimated.append(e)
        r, old = e["daemon_rule"], e["previous_rule_plugin"]
        print(
            f"estimated p0 {p0:.2f} -> {p1:.2f} (reference {args.reference_grasps} grasps): "
            f"grasps between false alarms {r['grasps_between_false_alarms']} "
            f"({r['ratio_to_configured']}x; exact {r['exact_grasps_between_false_alarms']}; "
            f"one reference's ARL0 q10/50/90 {r['reference_arl0_q10_q50_q90']}), delay "
            f"{r['mean_delay_after_change_at_500']} (zero state {r['mean_delay_zero_state']}); "
            f"previous rule {old['grasps_between_false_alarms']} ({old['ratio_to_configured']}x), "
            f"delay {old['mean_delay_after_change_at_500']}"
            + (
                f"; class check {e['class_check']['false_alarms']} alarms (expected "
                f"{e['class_check']['expected_false_alarms_for_these_references']})"
                if "class_check" in e
                else ""
            )
        )
    for p0, p1 in SCENARIOS:
        k = known_scenario(p0, p1, args.arl0, args.min_drop, args.streams, args.seed)
        known.append(k)
        print(
            f"known p0 {p0:.2f} -> {p1:.2f}: ARL0 measured {k['measured_arl0']} "
            f"(exact {k['design']['exact_arl0']}); delay {k['delay_zero_state']} "
            f"(after change {k['delay_after_change_at_500']}); optimal CUSUM "
            f"{k['optimal']['delay_zero_state']} at ARL0 {k['optimal']['measured_arl0']}; "
            f"bound {k['bound_log_arl0_over_kl']}"
        )
    print(
        json.dumps(
            {
                "bench": "detector",
                "streams": args.streams,
                "arl0": args.arl0,
                "min_drop": args.min_drop,
                "reference_grasps": args.reference_grasps,
                "seconds": round(time.time() - t0, 1),
                "estimated": estimated,
                "known": known,
            }
        )
    )


if __name__ == "__main__":
    main()
