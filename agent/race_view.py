"""What an operator sees of a race (``ctl status``): per-arm standings with intervals and
each live test (pure; the decisions are :mod:`agent.race`'s)."""

from __future__ import annotations

import math

from agent.race import State, leader, pair_llr


def wilson(successes: int, grasps: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate (95% at z = 1.96); (0, 1) with no grasps."""
    if grasps <= 0:
        return 0.0, 1.0
    p = successes / grasps
    d = 1 + z * z / grasps
    centre = (p + z * z / (2 * grasps)) / d
    half = z * math.sqrt(p * (1 - p) / grasps + z * z / (4 * grasps * grasps)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def standings(state: State) -> list[dict[str, object]]:
    """Per-arm standings for ``ctl status``, one plain dict per arm: arm, policy, parent (bool),
    role (``parent``, ``challenger``, ``certified``, ``leader``, ``winner``, ``eliminated``),
    grasps, successes, rate, interval (Wilson 95% of the rate, for reading: the decisions use
    the paired test), eliminated (with by, at which race grasp, reason), and for a candidate in
    the race its test: against which arm, paired cycles, discordant pairs won and lost, the
    paired gap (success-rate difference over the cycles both served), llr and the bounds where
    it is eliminated and (against the parent) certified."""
    cfg, k = state.config, state.candidates
    left = {e.arm: e for e in state.eliminated}
    top = leader(state)
    rows: list[dict[str, object]] = []
    for arm, policy in enumerate(state.policies):
        n, s = state.grasps[arm], state.successes[arm]
        lo, hi = wilson(s, n)
        e = left.get(arm)
        role = "parent" if arm == 0 else "challenger"
        if state.winner == arm:
            role = "winner"
        elif e is not None:
            role = "eliminated"
        elif arm != 0 and arm == top:
            role = "leader"
        elif arm in state.certified:
            role = "certified"
        row: dict[str, object] = {
            "arm": arm,
            "policy": policy,
            "parent": arm == 0,
            "role": role,
            "grasps": n,
            "successes": s,
            "rate": round(s / n, 4) if n else None,
            "interval": [round(lo, 4), round(hi, 4)],
            "eliminated": e is not None,
            "eliminated_by": None if e is None else e.by,
            "eliminated_at": None if e is None else e.grasp,
            "reason": None if e is None else e.reason,
        }
        if role in ("challenger", "certified"):
            against = 0 if role == "challenger" and 0 not in state.out else top
            p = state.pair(arm, against)
            won, lost = p.wins(arm)
            row["test"] = {
                "against": against,
                "cycles": p.cycles,
                "won": won,
                "lost": lost,
                "gap": round((won - lost) / p.cycles, 4) if p.cycles else None,
                "llr": round(pair_llr(state, arm, against), 4),
                "eliminated_at": round(cfg.lower(k), 4),
                "certified_at": round(cfg.upper(k), 4) if against == 0 else None,
                **_to_decision(state, arm, against),
            }
        rows.append(row)
    return rows


def _to_decision(state: State, arm: int, against: int) -> dict[str, object]:
    """The fewest discordant pairs still needed to decide ``arm``'s test: wins to be certified
    (against the parent) and losses to be eliminated, with no pair going the other way."""
    cfg, k = state.config, state.candidates
    llr = pair_llr(state, arm, against)
    up, down = math.log(2 * cfg.q1), -math.log(2 * (1 - cfg.q1))
    wins = max(0, math.ceil((cfg.upper(k) - llr) / up - 1e-9)) if against == 0 else None
    return {
        "wins_to_certify": wins,
        "losses_to_eliminate": max(0, math.ceil((llr - cfg.lower(k)) / down - 1e-9)),
    }


def view(state: State) -> dict[str, object]:
    """The race for ``ctl status``: grasps so far, the cap and how many grasps it leaves at
    most, the leader, the cost so far and the standings."""
    return {
        "grasps": state.total,
        "max_grasps": state.config.max_grasps,
        "grasps_left_at_most": max(0, state.config.max_grasps - state.total),
        "leader": state.policies[leader(state)],
        "cost": sum(state.grasps[a] for a in state.out),
        "standings": standings(state),
    }


def race_lines(view: dict[str, object]) -> list[str]:
    """:func:`view` for a person: a header line, then one line per arm."""
    head = (
        f"race: {view['grasps']} grasps (at most {view['grasps_left_at_most']} more), "
        f"leader {str(view['leader'])[:12]}, cost {view['cost']} grasps"
    )
    lines = [head]
    rows = view.get("standings")
    for r in rows if isinstance(rows, list) else []:
        lo, hi = r["interval"]
        rate = "-" if r["rate"] is None else f"{r['rate']:.3f}"
        line = (
            f"  arm {r['arm']} {str(r['policy'])[:12]} {r['role']:<10} "
            f"{r['successes']}/{r['grasps']} = {rate} [{lo:.2f}, {hi:.2f}]"
        )
        t = r.get("test")
        if isinstance(t, dict):
            certify = t["wins_to_certify"]
            line += (
                f"; pairs won {t['won']} lost {t['lost']}, llr {t['llr']}: "
                + (f"certified after {certify} more wins, " if certify is not None else "")
                + f"out after {t['losses_to_eliminate']} more losses"
            )
        elif r["eliminated"]:
            line += f"; out at race grasp {r['eliminated_at']} ({r['reason']})"
        lines.append(line)
    return lines
