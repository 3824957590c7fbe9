"""Operating characteristic of the policy race (agent/race.py) at known success rates.

Usage: python -m bench.race_oc [--races N] [--seed S] [--quick]

For a parent succeeding at p0 (0.50, 0.60, 0.70, 0.85) and candidates at p0 + gap (gap -10,
-5, 0, +5, +10, +15 points, capped at 0.99), with 1 candidate and with 3 (all three at the
gap: for a negative gap, three chances for a worse child to win), it runs N races with
independent Bernoulli grasps through the real ``agent.race`` functions (``run_race``) and
reports, against the true gap:

- ``win``: the probability that a candidate wins (for gap < 0, a worse child winning: the
  target is <= 5% at -5 points; for gap > 0, the power);
- ``grasps``: mean race grasps to a decision (all arms);
- ``cost``: mean grasps served under arms that end eliminated (the target is <= 150 at a
  10-point gap with one candidate);
- ``cap``: the share of races that ended at ``max_grasps``.

With one candidate the race is a random walk on the discordant pairs, so the same figures are
also computed *exactly* by dynamic programming over (pairs won, pairs lost) per cycle
(``exact``), which checks the simulation and gives the figures without sampling error.

Independent grasps are the hard case for a paired test: on a robot the arms of a cycle see the
same bin, so their outcomes are positively correlated, fewer pairs are discordant and the race
decides sooner at the same error rates.

Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from typing import Any

import numpy as np

from agent.race import RaceConfig, decide, new_race, run_race

PARENT_RATES = (0.50, 0.60, 0.70, 0.85)
GAPS = (-0.10, -0.05, 0.0, 0.05, 0.10, 0.15)
CANDIDATES = (1, 3)
MAX_RATE = 0.99


def simulate(
    config: RaceConfig, p0: float, pc: float, k: int, races: int, rng: random.Random
) -> dict[str, float]:
    """Run ``races`` races of a parent at ``p0`` against ``k`` candidates at ``pc``."""
    rates = (p0, *([pc] * k))
    wins = grasps = cost = cap = 0
    for _ in range(races):
        state = new_race("parent", [f"c{i}" for i in range(1, k + 1)], config)
        state = run_race(state, lambda arm: rng.random() < rates[arm])
        v = decide(state)
        wins += v.winner != 0
        grasps += v.grasps
        cost += v.cost
        cap += v.reason == "cap"
    return {
        "win": wins / races,
        "grasps": grasps / races,
        "cost": cost / races,
        "cap": cap / races,
    }


def exact_one(config: RaceConfig, p0: float, pc: float) -> dict[str, float]:
    """The one-candidate race's figures, exactly: P(the candidate wins), mean grasps, mean cost.

    A cycle is one grasp each; the candidate wins a discordant pair with probability
    pc (1 - p0), loses one with p0 (1 - pc). After each cycle the race stops when the llr of
    (won, lost) reaches the certification or elimination bound, or when 2 x cycles reaches
    max_grasps (the parent wins). The loser's grasps (the cost) are the cycles run.
    """
    up, lo = config.upper(1), config.lower(1)
    ls, lf = math.log(2 * config.q1), math.log(2 * (1 - config.q1))
    d_win, d_loss = pc * (1 - p0), p0 * (1 - pc)
    tie = 1 - d_win - d_loss
    cycles = math.ceil(config.max_grasps / 2)
    alive = np.zeros((cycles + 2, cycles + 2))  # alive[w, l]
    alive[0, 0] = 1.0
    w = np.arange(cycles + 2)[:, None]
    lost = np.arange(cycles + 2)[None, :]
    llr = w * ls + lost * lf
    win = mean_cycles = 0.0
    for n in range(1, cycles + 1):
        nxt = alive * tie
        nxt[1:, :] += alive[:-1, :] * d_win
        nxt[:, 1:] += alive[:, :-1] * d_loss
        certified = llr >= up
        stop = certified | (llr <= lo)
        win += float(nxt[certified].sum())
        if n == cycles:
            mean_cycles += n * float(nxt.sum())
            break
        mean_cycles += n * float(nxt[stop].sum())
        nxt[stop] = 0.0
        alive = nxt
    return {"win": win, "grasps": 2 * mean_cycles, "cost": mean_cycles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--races", type=int, default=1000, help="races per cell (default 1000)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="p0 = 0.7 only, 100 races per cell")
    args = ap.parse_args()
    races = 100 if args.quick else args.races
    parents = (0.70,) if args.quick else PARENT_RATES
    config = RaceConfig()
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    print(
        f"race OC: alpha {config.alpha}, beta {config.beta}, gain {config.gain} at "
        f"{config.reference_rate} (q1 {config.q1:.3f}), max_grasps {config.max_grasps}; "
        f"{races} races per cell"
    )
    print(
        f"{'k':>2} {'p0':>5} {'gap':>5} {'win':>6} {'grasps':>7} {'cost':>6} {'cap':>5}  exact(k=1)"
    )
    for k in CANDIDATES:
        for p0 in parents:
            for gap in GAPS:
                pc = round(min(p0 + gap, MAX_RATE), 4)
                row: dict[str, Any] = {"k": k, "p0": p0, "gap": gap, "pc": pc}
                row.update(simulate(config, p0, pc, k, races, rng))
                exact = ""
                if k == 1:
                    row["exact"] = exact_one(config, p0, pc)
                    e = row["exact"]
                    exact = f"win {e['win']:.3f} grasps {e['grasps']:.0f} cost {e['cost']:.0f}"
                rows.append(row)
                print(
                    f"{k:>2} {p0:>5.2f} {gap * 100:>+5.0f} {row['win']:>6.3f} "
                    f"{row['grasps']:>7.0f} {row['cost']:>6.0f} {row['cap']:>5.2f}  {exact}",
                    flush=True,
                )

    def worst(k: int, gap: float, key: str, exact: bool = False) -> float:
        vals = [(r["exact"] if exact else r)[key] for r in rows if r["k"] == k and r["gap"] == gap]
        return float(max(vals))

    summary = {
        "worse_by_5_wins_max_k1": worst(1, -0.05, "win"),
        "worse_by_5_wins_max_k1_exact": worst(1, -0.05, "win", exact=True),
        "worse_by_5_wins_max_k3": worst(3, -0.05, "win"),
        "cost_at_plus_10_max_k1": worst(1, 0.10, "cost"),
        "cost_at_plus_10_max_k1_exact": worst(1, 0.10, "cost", exact=True),
        "cost_at_plus_10_max_k3": worst(3, 0.10, "cost"),
        "power_at_plus_10_min_k1_exact": min(
            r["exact"]["win"] for r in rows if r["k"] == 1 and r["gap"] == 0.10
        ),
        "power_at_plus_10_min_k3": min(r["win"] for r in rows if r["k"] == 3 and r["gap"] == 0.10),
    }
    summary["targets_met"] = (
        summary["worse_by_5_wins_max_k1_exact"] <= 0.05
        and summary["worse_by_5_wins_max_k3"] <= 0.05
        and summary["cost_at_plus_10_max_k1_exact"] <= 150
    )
    print(
        json.dumps(
            {
                "bench": "race_oc",
                "config": config.to_dict(),
                "q1": round(config.q1, 4),
                "races_per_cell": races,
                "seed": args.seed,
                "summary": summary,
                "rows": rows,
                "wall_s": round(time.monotonic() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
