"""False-alarm rate and detection delay of the agent's success-drop detector.

Usage: python -m bench.detector [--streams N] [--arl0 A] [--min-drop D] [--reference-grasps R]

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
import time
from typing import Any

import numpy as np

from agent.detector import (
    CusumDesign,
    SuccessDropDetector,
    arl_curve,
    arl_markov,
    design_cusum,
    design_from_counts,
    integer_steps,
    llr_increments,
    run_lengths,
)
from testkit.streams import binomial_weights, chart_step

CHANGE_AT = 500
CHANGES = (500, 2000)
SCENARIOS = ((0.86, 0.50), (0.90, 0.75))


def kl(p1: float, p0: float) -> float:
    return p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))


# -- part 1: p0 estimated from the robot's own reference, as the daemon does ---------------------
def plugin_design(s: int, n: int, min_drop: float, arl0: float) -> CusumDesign:
    """The previous rule: the chart for a known p0, fed the Laplace estimate."""
    return design_cusum((s + 1) / (n + 2), min_drop, arl0)


def exact_over_references(
    rule: Any, p0: float, n: int, min_drop: float, arl0: float
) -> dict[str, float]:
    """Exact in-control figures averaged over the reference counts s ~ Binomial(n, p0)."""
    counts, weights = binomial_weights(n, p0)
    arls = []
    for s in counts:
        d = cached_design(rule, int(s), n, min_drop, arl0)
        arls.append(float(arl_curve(d.down, d.up, d.threshold, [p0])[0, -1]))
    a = np.array(arls)
    order = np.argsort(a)
    cdf = np.cumsum(weights[order])

    def q(f: float) -> float:
        return float(a[order][min(int(np.searchsorted(cdf, f)), a.size - 1)])

    return {
        "grasps_between_false_alarms": float(1.0 / (weights / a).sum()),
        "mean_first_alarm": float((weights * a).sum()),
        "reference_arl0_q10": q(0.1),
        "reference_arl0_q50": q(0.5),
        "reference_arl0_q90": q(0.9),
    }


_DESIGNS: dict[tuple[Any, int, int, float, float], CusumDesign] = {}


def cached_design(rule: Any, s: int, n: int, min_drop: float, arl0: float) -> CusumDesign:
    key = (rule, s, n, min_drop, arl0)
    if key not in _DESIGNS:
        _DESIGNS[key] = rule(s, n, min_drop, arl0)
    return _DESIGNS[key]


def simulate_fleet(
    rule: Any,
    counts: np.ndarray,
    n: int,
    p0: float,
    min_drop: float,
    arl0: float,
    steps: int,
    rng: np.random.Generator,
    max_reference: int,
    change_at: int | None = None,
    p_after: float | None = None,
) -> dict[str, np.ndarray]:
    """Robots that each start from a reference of ``counts[i]`` successes in ``n`` grasps and
    run SuccessDropDetector's logic, vectorised: restart at 0 after an alarm; while the
    reference is below ``max_reference``, each window of as many monitored grasps as the
    reference holds joins it, the chart is re-tuned and the statistic carried over in nats."""

    def designs(ref_s: np.ndarray, ref_n: np.ndarray) -> tuple[np.ndarray, ...]:
        pairs = zip(ref_s.tolist(), ref_n.tolist(), strict=True)
        ds = [cached_design(rule, a, b, min_drop, arl0) for a, b in pairs]
        nats = np.array([llr_increments(x.p0, x.p1)[1] / x.up for x in ds])
        return (
            np.array([x.down for x in ds]),
            np.array([x.up for x in ds]),
            np.array([x.threshold for x in ds]),
            nats,
        )

    robots = counts.size
    ref_s, ref_n = counts.astype(np.int64), np.full(robots, n, dtype=np.int64)
    d, u, h, unit = designs(ref_s, ref_n)
    win_s, win_n = np.zeros(robots, np.int64), np.zeros(robots, np.int64)
    stat = np.zeros(robots, np.int64)
    alarms = np.zeros(robots, np.int64)
    change = steps if change_at is None else change_at
    delay = np.full(robots, steps - change, np.int64)
    waiting = np.ones(robots, bool)
    ref_at_change = ref_n.copy()
    t = 0
    for start in range(0, steps, 512):
        m = min(512, steps - start)
        u01 = rng.random((m, robots))
        for k in range(m):
            t = start + k
            if t == change:
                ref_at_change = ref_n.copy()
            success = u01[k] < (p0 if t < change or p_after is None else p_after)
            chart_step(stat, success, t, change, d, u, h, alarms, delay, waiting)
            grow = ref_n < max_reference
            win_s += success & grow
            win_n += grow
            due = grow & (win_n >= ref_n)
            if due.any():  # the windows are deterministic: every growing robot is due at once
                ref_s[due] += win_s[due]
                ref_n[due] += win_n[due]
                win_s[due] = win_n[due] = 0
                nd, nu, nh, nunit = designs(ref_s[due], ref_n[due])
                stat[due] = np.rint(stat[due] * unit[due] / nunit).astype(np.int64)
                d[due], u[due], h[due], unit[due] = nd, nu, nh, nunit
        if t >= change and not waiting.any():
            break
    return {"alarms": alarms, "delay": delay, "reference_at_change": ref_at_change}


def simulate_rule(
    rule: Any,
    grow: bool,
    p0: float,
    p1: float,
    n: int,
    min_drop: float,
    arl0: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    robots = args.streams
    counts = rng.binomial(n, p0, size=robots)  # each robot's reference: s successes of n
    max_ref = args.max_reference if grow else n
    horizon = int(args.horizon_x * arl0)
    run = simulate_fleet(rule, counts, n, p0, min_drop, arl0, horizon, rng, max_ref)
    alarms = int(run["alarms"].sum())
    measured = robots * horizon / max(alarms, 1)
    out: dict[str, Any] = {
        "grasps_between_false_alarms": round(measured, 1),
        "ratio_to_configured": round(measured / arl0, 3),
        "false_alarms": alarms,
        "monitored_grasps": robots * horizon,
    }
    censored = 0
    for at in (0, *CHANGES):
        r = simulate_fleet(rule, counts, n, p0, min_drop, arl0, at + horizon, rng, max_ref, at, p1)
        key = "zero_state" if at == 0 else f"after_change_at_{at}"
        out[f"mean_delay_{key}"] = round(float(r["delay"].mean()), 2)
        out[f"reference_grasps_{key}"] = int(np.median(r["reference_at_change"]))
        censored += int((r["delay"] >= horizon).sum())
    out["censored_delays"] = censored
    exact = exact_over_references(rule, p0, n, min_drop, arl0)
    out["first_reference_exact"] = {
        "grasps_between_false_alarms": round(exact["grasps_between_false_alarms"], 1),
        "reference_arl0_q10_q50_q90": [round(exact[f"reference_arl0_q{q}"]) for q in (10, 50, 90)],
        "mean_first_alarm_over_references": round(exact["mean_first_alarm"], 1),
    }
    if grow and n < max_ref:
        late = exact_over_references(rule, p0, max_ref, min_drop, arl0)
        out["grown_reference_exact"] = {
            "reference_grasps": max_ref,
            "grasps_between_false_alarms": round(late["grasps_between_false_alarms"], 1),
            "reference_arl0_q10_q50_q90": [
                round(late[f"reference_arl0_q{q}"]) for q in (10, 50, 90)
            ],
        }
    return out


def class_check(
    p0: float,
    n: int,
    min_drop: float,
    arl0: float,
    robots: int,
    grasps: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The real SuccessDropDetector fed grasp by grasp (reference, then in-control grasps),
    next to the vectorised simulation of the same logic over the same horizon."""
    rng = np.random.default_rng(args.seed + 1)
    alarms = 0
    for _ in range(robots):
        det = SuccessDropDetector(arl0, min_drop, n, max_reference=args.max_reference)
        for x in rng.random(n) < p0:
            det.update(bool(x))
        alarms += sum(det.update(bool(x)) is not None for x in rng.random(grasps) < p0)
    counts = rng.binomial(n, p0, size=args.streams)
    fleet = simulate_fleet(
        design_from_counts, counts, n, p0, min_drop, arl0, grasps, rng, args.max_reference
    )
    return {
        "robots": robots,
        "grasps_each": grasps,
        "false_alarms": alarms,
        "grasps_between_false_alarms": round(robots * grasps / max(alarms, 1), 1),
        "vectorised_same_horizon": round(args.streams * grasps / max(fleet["alarms"].sum(), 1), 1),
    }


def estimated_scenario(p0: float, p1: float, args: argparse.Namespace) -> dict[str, Any]:
    n, drop, arl0 = args.reference_grasps, args.min_drop, args.arl0
    out: dict[str, Any] = {"p0": p0, "p1": p1, "configured_arl0": arl0, "reference_grasps": n}
    t = time.perf_counter()
    out["daemon_rule"] = simulate_rule(design_from_counts, True, p0, p1, n, drop, arl0, args)
    out["fixed_reference"] = simulate_rule(design_from_counts, False, p0, p1, n, drop, arl0, args)
    out["previous_rule_plugin"] = simulate_rule(plugin_design, False, p0, p1, n, drop, arl0, args)
    if args.class_check_robots:
        out["class_check"] = class_check(
            p0, n, drop, arl0, args.class_check_robots, int(3 * arl0), args
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


def known_scenario(
    p0: float, p1: float, arl0: float, min_drop: float, n: int, seed: int
) -> dict[str, Any]:
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
    ap.add_argument("--max-reference", type=int, default=1600, help="largest grown reference")
    ap.add_argument("--class-check-robots", type=int, default=200, help="0: skip the check")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    estimated, known = [], []
    for p0, p1 in SCENARIOS:
        e = estimated_scenario(p0, p1, args)
        estimated.append(e)
        r, fixed, old = e["daemon_rule"], e["fixed_reference"], e["previous_rule_plugin"]
        print(
            f"estimated p0 {p0:.2f} -> {p1:.2f} (reference {args.reference_grasps} grasps, "
            f"growing to {args.max_reference}): grasps between false alarms "
            f"{r['grasps_between_false_alarms']} ({r['ratio_to_configured']}x); delay "
            f"{r['mean_delay_after_change_at_500']} at 500, {r['mean_delay_after_change_at_2000']}"
            f" at 2000 (zero state {r['mean_delay_zero_state']}) | fixed reference "
            f"{fixed['grasps_between_false_alarms']} ({fixed['ratio_to_configured']}x), delay "
            f"{fixed['mean_delay_after_change_at_500']} | previous rule "
            f"{old['grasps_between_false_alarms']} ({old['ratio_to_configured']}x), delay "
            f"{old['mean_delay_after_change_at_500']}"
            + (
                f" | class check {e['class_check']['grasps_between_false_alarms']} "
                f"(vectorised {e['class_check']['vectorised_same_horizon']})"
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
