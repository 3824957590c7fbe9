"""The lifecycle's race and round transitions (pure): a trained child racing its parent, what
a verdict does, and whether another round follows (:mod:`agent.rounds`). Called by
:func:`agent.lifecycle.step`; it returns the next state and the effects as ``step`` does."""

from __future__ import annotations

from dataclasses import replace

from agent import race as rc
from agent import rounds as rd
from agent.lifecycle_events import (
    Effect,
    GraspDone,
    PolicyFault,
    PolicyReady,
    RejectPolicy,
    SwapPolicy,
    report,
)
from agent.lifecycle_state import Phase, State, with_good


def start_race(s: State, e: PolicyReady) -> tuple[State, list[Effect]]:
    """RACING: the child races its parent (the active policy) from the next grasp."""
    assert s.policy is not None
    race = rc.new_race(s.policy, [e.policy], s.race_cfg)
    r = s.rounds if s.rounds is not None else rd.Rounds(stopped="no change")
    news = report(
        "race",
        event="started",
        parent=s.policy,
        candidates=[e.policy],
        job=s.job,
        round=r.round,
        condition=s.condition,
    )
    r = replace(r, race=race, last_grasp=max(r.last_grasp, e.grasp))
    return replace(s, phase=Phase.RACING, job=None, explored=0, rounds=r), [news]


def race_grasp(s: State, e: GraspDone) -> tuple[State, list[Effect]]:
    """Count a race grasp (the arm whose turn it was; a grasp already counted, or one served
    by another policy, changes nothing) and act on what it decided."""
    r, race = s.rounds, s.race
    if r is None or race is None or race.winner is not None:
        return s, []
    arm = rc.next_arm(race)
    if (e.policy is not None and e.policy != race.policies[arm]) or (
        e.grasp and e.grasp <= r.last_grasp
    ):
        return s, []
    after = rc.record(race, arm, e.success)
    r = replace(r, race=after, last_grasp=max(r.last_grasp, e.grasp), grasps=r.grasps + 1)
    effects: list[Effect] = [
        report("race", event="eliminated", arm=x.arm, policy=after.policies[x.arm], reason=x.reason)
        for x in after.eliminated[len(race.eliminated) :]
        if after.winner is None
    ]
    s = replace(s, rounds=r)
    return race_decided(s, after, effects) if after.winner is not None else (s, effects)


def withdraw(s: State, race: rc.State, e: PolicyFault) -> tuple[State, list[Effect]]:
    """A racing child faulted: out of the race and rejected; the race goes on or ends."""
    assert s.rounds is not None
    after = rd.withdraw(race, race.policies.index(e.policy), "fault")
    s = replace(s, rounds=replace(s.rounds, race=after))
    effects: list[Effect] = [RejectPolicy(e.policy, e.reason)]
    return race_decided(s, after, effects) if after.winner is not None else (s, effects)


def race_decided(s: State, race: rc.State, effects: list[Effect]) -> tuple[State, list[Effect]]:
    """The winner serves (and joins the good policies); a losing child is rejected."""
    assert s.rounds is not None and race.winner is not None
    v = rc.decide(race)
    winner, parent = race.policies[race.winner], race.policies[0]
    rejected = {x.policy for x in effects if isinstance(x, RejectPolicy)}
    for arm, pid in enumerate(race.policies[1:], start=1):
        if arm != race.winner and pid not in rejected:
            why = f"lost the race to {winner} ({v.reason}; {_rates(race)})"
            effects.append(RejectPolicy(pid, why))
    effects.append(
        report(
            "race",
            event="decided",
            winner=winner,
            parent=parent,
            reason=v.reason,
            grasps=v.grasps,
            cost=v.cost,
            arms=[
                {"policy": p, "grasps": race.grasps[a], "successes": race.successes[a]}
                for a, p in enumerate(race.policies)
            ],
        )
    )
    n = race.grasps[race.winner] if race.winner is not None else 0
    r = replace(s.rounds, level=rd.race_level(race), level_grasps=n, races=s.rounds.races + 1)
    r = replace(r, cost=r.cost + v.cost)
    s = replace(s, rounds=r)
    if winner != parent:
        s = replace(s, policy=winner, good=with_good(s.good, winner))
        effects.append(SwapPolicy(winner, f"won the race in condition {s.condition}"))
    return round_over(s, winner == parent, effects)


def _rates(race: rc.State) -> str:
    return ", ".join(f"{race.successes[a]}/{race.grasps[a]}" for a in range(len(race.policies)))


def round_over(s: State, parent_serves: bool, effects: list[Effect]) -> tuple[State, list[Effect]]:
    """A round ended (a race, or a job without a child): the next round collects, or the
    rounds stop and the agent serves."""
    r = s.rounds
    if r is None:
        return replace(s, phase=Phase.SERVING, explored=0), effects
    if r.stopped:
        return stop(s, replace(r, race=None), effects)
    r = rd.after_round(s.rounds_cfg, r, parent_serves)
    if r.stopped:
        return stop(s, r, effects)
    effects.append(report("round", event="collecting", round=r.round + 1, grasps=r.grasps))
    return replace(s, phase=Phase.EXPLORING, explored=0, rounds=r), effects


def stop(s: State, r: rd.Rounds, effects: list[Effect]) -> tuple[State, list[Effect]]:
    news = report(
        "round",
        event="ended",
        reason=r.stopped,
        rounds=r.round,
        level=r.level,
        level_before=r.level_before,
        grasps=r.grasps,
        cost=r.cost,
    )
    return replace(s, phase=Phase.SERVING, explored=0, rounds=r), [*effects, news]


def abandon_race(s: State, why: str) -> list[Effect]:
    """The news of a race given up unfinished (its children stay candidates)."""
    race = s.race
    if race is None or race.winner is not None:
        return []
    return [report("race", event="abandoned", reason=why, grasps=race.total, condition=s.condition)]
