"""A race between a parent policy and its candidate children on the robot's own grasps (pure).

Arm 0 is the parent, arms 1..k are candidates. The robot serves the surviving arms in
*cycles*: one grasp each, on consecutive grasps (so the arms of a cycle see the same bin as
near as the robot allows), the order rotated by one each cycle so that no arm always gets the
first grasp of a fresh scene. A cycle's outcomes are paired evidence between every two arms in
it: of two arms X and Y, the cycles where exactly one of them succeeded (*discordant* pairs)
carry the whole comparison, the rest is the scene's difficulty.

The decision (:func:`record` applies it when a cycle closes; :func:`decide` reads it) uses
one sequential sign test, on the discordant pairs of two arms: Wald's likelihood ratio of "Y
wins a discordant pair against X with probability q1" (Y better by the design gain) against
"with probability 1/2" (no better), ``llr(Y, X) = w * log(2 q1) + l * log(2 (1 - q1))`` with w, l
the discordant pairs Y won and lost against X over the whole race.

- Against the parent. While the parent is in the race, each candidate not yet certified is
  tested against it: ``llr(Y, parent) >= log(k / alpha)`` *certifies* Y (significantly better
  than the parent); ``llr(Y, parent) <= log(beta / (1 - alpha / k))`` eliminates Y (the
  evidence favours "no better" over "better by the gain"; a worse child gets there soonest).
- Against the leader. The *leader* is the certified candidate with the highest success rate
  (the parent while none is certified). Once there is one, any other candidate Y with
  ``llr(Y, leader) <= log(beta / (1 - alpha / k))`` is eliminated. As soon as every candidate
  left is certified the parent is eliminated and the leader wins (the others, certified too,
  leave as ``behind``): the parent leaves only when a candidate was significantly better.
- One arm left: it wins. At ``max_grasps`` (checked when a cycle closes) the leader wins and
  the arms left are eliminated: with none certified, the parent wins. Ties go to the parent.

Error control, valid under continuous monitoring (testing after every cycle): for a candidate
no better than the parent (q <= 1/2 on discordant pairs, cycles independent), exp(llr) against
the parent is a nonnegative supermartingale, so by Ville's inequality it ever reaches k / alpha
with probability <= alpha / k, whenever and however often it is looked at. Only certified
candidates can win, so by Bonferroni over the k candidates **a candidate no better than the
parent wins with probability <= alpha**, for any rates and any number of looks, as long as a
scene does not favour one arm of a pair over the other (hence the rotating order). Tests among
candidates only decide which certified one wins, so they spend none of alpha. Eliminating a
candidate that is better by the gain happens with probability about beta (Wald's).

q1 is the design gain as an odds ratio: a child ``gain`` points above a parent at
``reference_rate`` wins a discordant pair of independent grasps with probability
``q1 = OR / (1 + OR)``. ``bench/race_oc.py`` simulates the race at known rates and
``docs/race.md`` gives its operating characteristic (win probability, grasps to a decision,
grasps under eliminated arms: the race's *cost*).

The state (:class:`State`) is immutable and round-trips through ``to_dict``/``from_dict`` so the
daemon can persist it after every grasp; it carries its own config, so a race resumed after a
restart keeps the boundaries it started with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property


class RaceError(ValueError):
    """A call that the race's state does not allow (a grasp out of turn, a finished race)."""


@dataclass(frozen=True)
class RaceConfig:
    """The race's test and its budget (``bench/race_oc.py`` measures these defaults)."""

    alpha: float = 0.10
    """Bound on the probability that a candidate no better than the parent wins (any k)."""
    beta: float = 0.10
    """Wald's target probability of eliminating a challenger better by ``gain``."""
    gain: float = 0.10
    """Improvement in success rate (points / 100) the test is tuned to find..."""
    reference_rate: float = 0.70
    """...over a parent succeeding at this rate (gain and rate make the odds ratio q1)."""
    max_grasps: int = 600
    """Grasps (all arms) after which the leader wins; checked when a cycle closes."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"race.alpha must be in (0, 1): {self.alpha}")
        if not 0 < self.beta < 1:
            raise ValueError(f"race.beta must be in (0, 1): {self.beta}")
        if not 0 < self.reference_rate < 1 or not 0 < self.reference_rate + self.gain < 1:
            raise ValueError(
                "race.reference_rate and race.reference_rate + race.gain must be in (0, 1): "
                f"{self.reference_rate}, {self.gain}"
            )
        if self.gain <= 0:
            raise ValueError(f"race.gain must be > 0: {self.gain}")
        if self.max_grasps < 2:
            raise ValueError(f"race.max_grasps must be >= 2: {self.max_grasps}")

    @property
    def q1(self) -> float:
        """Probability that a ``gain``-better challenger wins a discordant pair."""
        p, c = self.reference_rate, self.reference_rate + self.gain
        odds_ratio = (c / (1 - c)) / (p / (1 - p))
        return odds_ratio / (1 + odds_ratio)

    def alpha_arm(self, candidates: int) -> float:
        """Level of one candidate's test against the parent: alpha over the k candidates."""
        return self.alpha / max(1, candidates)

    def upper(self, candidates: int) -> float:
        """LLR against the parent at which a candidate is certified."""
        return math.log(1 / self.alpha_arm(candidates))

    def lower(self, candidates: int) -> float:
        """LLR (against the parent or the leader) at which a candidate is eliminated."""
        return math.log(self.beta / (1 - self.alpha_arm(candidates)))

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> RaceConfig:
        return cls(
            alpha=float(str(d["alpha"])),
            beta=float(str(d["beta"])),
            gain=float(str(d["gain"])),
            reference_rate=float(str(d["reference_rate"])),
            max_grasps=int(str(d["max_grasps"])),
        )


@dataclass(frozen=True)
class Pair:
    """Paired outcomes of arms ``a < b`` over the cycles that served both."""

    a: int
    b: int
    both: int = 0
    """Cycles where both succeeded."""
    a_only: int = 0
    """Cycles where a succeeded and b failed."""
    b_only: int = 0
    """Cycles where b succeeded and a failed."""
    neither: int = 0
    """Cycles where both failed."""

    @property
    def cycles(self) -> int:
        return self.both + self.a_only + self.b_only + self.neither

    def add(self, a_success: bool, b_success: bool) -> Pair:
        if a_success and b_success:
            return replace(self, both=self.both + 1)
        if a_success:
            return replace(self, a_only=self.a_only + 1)
        if b_success:
            return replace(self, b_only=self.b_only + 1)
        return replace(self, neither=self.neither + 1)

    def wins(self, arm: int) -> tuple[int, int]:
        """(discordant pairs ``arm`` won, lost) against the other arm of the pair."""
        return (self.a_only, self.b_only) if arm == self.a else (self.b_only, self.a_only)


@dataclass(frozen=True)
class Elimination:
    """An arm left the race."""

    arm: int
    by: int
    """The arm whose evidence eliminated it (the winner, for ``cap``)."""
    grasp: int
    """Race grasps served when it left."""
    reason: str
    """``beaten`` (the parent, once every candidate left is certified), ``short`` (a
    candidate whose evidence favours "no better" against the parent or the leader), ``cap``
    (left at max_grasps), ``behind`` (a certified candidate behind the leader when the
    parent left)."""


@dataclass(frozen=True)
class State:
    """A race in progress or decided."""

    policies: tuple[str, ...]
    """Policy id of each arm; arm 0 is the parent."""
    config: RaceConfig
    """The test the race started with (kept across restarts)."""
    grasps: tuple[int, ...]
    """Grasps served under each arm."""
    successes: tuple[int, ...]
    """Successes of each arm."""
    pairs: tuple[Pair, ...]
    """Paired outcomes of every two arms, (0,1), (0,2), ..., (1,2), ..."""
    certified: tuple[int, ...] = ()
    """Candidates significantly better than the parent, in the order they got there."""
    eliminated: tuple[Elimination, ...] = ()
    """Arms that left, in order."""
    cycle: int = 0
    """Cycles closed so far."""
    pending: tuple[tuple[int, bool], ...] = ()
    """(arm, success) of the current cycle so far."""
    winner: int | None = None
    """The winning arm once decided."""

    @property
    def candidates(self) -> int:
        return len(self.policies) - 1

    @property
    def total(self) -> int:
        """Race grasps so far."""
        return sum(self.grasps)

    @cached_property
    def out(self) -> frozenset[int]:
        return frozenset(e.arm for e in self.eliminated)

    @cached_property
    def survivors(self) -> tuple[int, ...]:
        out = self.out
        return tuple(a for a in range(len(self.policies)) if a not in out)

    def pair(self, x: int, y: int) -> Pair:
        a, b = min(x, y), max(x, y)
        n = len(self.policies)
        return self.pairs[a * n - a * (a + 1) // 2 + (b - a - 1)]

    def to_dict(self) -> dict[str, object]:
        return {
            "policies": list(self.policies),
            "config": self.config.to_dict(),
            "grasps": list(self.grasps),
            "successes": list(self.successes),
            "pairs": [[p.a, p.b, p.both, p.a_only, p.b_only, p.neither] for p in self.pairs],
            "certified": list(self.certified),
            "eliminated": [asdict(e) for e in self.eliminated],
            "cycle": self.cycle,
            "pending": [[a, s] for a, s in self.pending],
            "winner": self.winner,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> State:
        winner = d.get("winner")
        config = d["config"]
        if not isinstance(config, dict):
            raise ValueError("race state: config must be an object")
        return cls(
            policies=tuple(str(p) for p in _as_list(d["policies"])),
            config=RaceConfig.from_dict(config),
            grasps=tuple(_int(g) for g in _as_list(d["grasps"])),
            successes=tuple(_int(s) for s in _as_list(d["successes"])),
            pairs=tuple(Pair(*(_int(v) for v in _as_list(p))) for p in _as_list(d["pairs"])),
            certified=tuple(_int(a) for a in _as_list(d.get("certified"))),
            eliminated=tuple(
                Elimination(
                    arm=_int(e["arm"]),
                    by=_int(e["by"]),
                    grasp=_int(e["grasp"]),
                    reason=str(e["reason"]),
                )
                for e in _as_list(d.get("eliminated"))
                if isinstance(e, dict)
            ),
            cycle=_int(d.get("cycle", 0)),
            pending=tuple(
                (_int(a), bool(s)) for a, s in (_as_list(p) for p in _as_list(d.get("pending")))
            ),
            winner=None if winner is None else _int(winner),
        )


def _as_list(v: object) -> list[object]:
    return list(v) if isinstance(v, list | tuple) else []


def _int(v: object) -> int:
    return int(str(v))


def new_race(parent: str, candidates: Sequence[str], config: RaceConfig | None = None) -> State:
    """A race of ``parent`` (arm 0) against ``candidates`` (arms 1..k); with no candidate the
    parent has already won. Policy ids must be distinct."""
    policies = (parent, *candidates)
    if len(set(policies)) != len(policies):
        raise ValueError(f"race arms must be distinct policies: {policies}")
    n = len(policies)
    state = State(
        policies=policies,
        config=config or RaceConfig(),
        grasps=(0,) * n,
        successes=(0,) * n,
        pairs=tuple(Pair(a, b) for a in range(n) for b in range(a + 1, n)),
    )
    return replace(state, winner=0) if n == 1 else state


def _cycle_order(state: State) -> tuple[int, ...]:
    arms = state.survivors
    r = state.cycle % len(arms)
    return arms[r:] + arms[:r]


def next_arm(state: State) -> int:
    """The arm to serve on the next grasp. Raises :class:`RaceError` once the race is decided."""
    if state.winner is not None:
        raise RaceError("the race is decided")
    served = {a for a, _ in state.pending}
    return next(a for a in _cycle_order(state) if a not in served)


def record(state: State, arm: int, success: bool) -> State:
    """Count one grasp served under ``arm`` (which must be :func:`next_arm`). When it closes a
    cycle, the cycle's pairs are counted and the eliminations and the verdict are applied."""
    expected = next_arm(state)
    if arm != expected:
        raise RaceError(f"grasp under arm {arm} out of turn: arm {expected} is next")
    grasps = list(state.grasps)
    successes = list(state.successes)
    grasps[arm] += 1
    successes[arm] += int(success)
    pending = (*state.pending, (arm, bool(success)))
    state = replace(state, grasps=tuple(grasps), successes=tuple(successes), pending=pending)
    if len(pending) < len(state.survivors):
        return state
    return close_cycle(state)


def close_cycle(state: State) -> State:
    """Count the current cycle's pairs, then apply the eliminations and the verdict
    (:func:`record` calls it on a cycle's last grasp; an arm withdrawn mid-cycle may close
    a cycle early)."""
    outcome = dict(state.pending)
    pairs = tuple(
        p.add(outcome[p.a], outcome[p.b]) if p.a in outcome and p.b in outcome else p
        for p in state.pairs
    )
    return _settle(replace(state, pairs=pairs, pending=(), cycle=state.cycle + 1))


def pair_llr(state: State, arm: int, other: int) -> float:
    """Log-likelihood ratio of "``arm`` is better than ``other`` by the design gain" against
    "no better", from their discordant pairs."""
    won, lost = state.pair(arm, other).wins(arm)
    q1 = state.config.q1
    return won * math.log(2 * q1) + lost * math.log(2 * (1 - q1))


def leader(state: State) -> int:
    """The certified candidate still in the race with the highest success rate (the lowest
    arm on a tie); the parent while there is none."""
    alive = [a for a in state.certified if a not in state.out]
    if not alive:
        return 0
    return max(alive, key=lambda a: (state.successes[a] / max(1, state.grasps[a]), -a))


def _settle(state: State) -> State:
    cfg, k = state.config, state.candidates
    upper, lower = cfg.upper(k), cfg.lower(k)
    if 0 not in state.out:
        for a in state.survivors:
            if a == 0 or a in state.certified:
                continue
            llr = pair_llr(state, a, 0)
            if llr >= upper:
                state = replace(state, certified=(*state.certified, a))
            elif llr <= lower:
                state = _eliminate(state, a, by=0, reason="short")
    top = leader(state)
    if top != 0:
        for a in state.survivors:
            if a not in (0, top) and pair_llr(state, a, top) <= lower:
                state = _eliminate(state, a, by=top, reason="short")
        if all(a in state.certified for a in state.survivors if a != 0):
            # Every arm left is significantly better than the parent: racing them further
            # would only pick among winners at the price of more grasps under losers.
            state = _eliminate(state, 0, by=top, reason="beaten")
            for a in state.survivors:
                if a != top:
                    state = _eliminate(state, a, by=top, reason="behind")
            return replace(state, winner=top)
    if len(state.survivors) == 1:
        return replace(state, winner=state.survivors[0])
    if state.total >= cfg.max_grasps:
        for a in state.survivors:
            if a != top:
                state = _eliminate(state, a, by=top, reason="cap")
        return replace(state, winner=top)
    return state


def _eliminate(state: State, arm: int, by: int, reason: str) -> State:
    e = Elimination(arm=arm, by=by, grasp=state.total, reason=reason)
    return replace(state, eliminated=(*state.eliminated, e))


@dataclass(frozen=True)
class Verdict:
    """Where the race stands."""

    done: bool
    """A winner is decided."""
    winner: int | None
    """Winning arm (None while running)."""
    policy: str | None
    """Winning policy id (None while running)."""
    leader: int
    """The certified candidate with the best rate; the parent while none is certified."""
    eliminated: tuple[int, ...]
    """Arms out of the race, in the order they left."""
    grasps: int
    """Race grasps so far."""
    cost: int
    """Grasps served under arms eliminated so far (all losers' grasps once done)."""
    reason: str
    """How it ended: ``parent beaten``, ``candidates eliminated``, ``cap`` or ``no
    candidates``; "" while running."""


def cost(state: State) -> int:
    """Grasps served under arms that are eliminated: the race's cost."""
    return sum(state.grasps[a] for a in state.out)


def decide(state: State) -> Verdict:
    """The race's verdict (:func:`record` applies the test when a cycle closes)."""
    reason = ""
    if state.winner is not None:
        if state.candidates == 0:
            reason = "no candidates"
        elif any(e.reason == "cap" for e in state.eliminated):
            reason = "cap"
        elif state.winner != 0:
            reason = "parent beaten"
        else:
            reason = "candidates eliminated"
    return Verdict(
        done=state.winner is not None,
        winner=state.winner,
        policy=None if state.winner is None else state.policies[state.winner],
        leader=leader(state),
        eliminated=tuple(e.arm for e in state.eliminated),
        grasps=state.total,
        cost=cost(state),
        reason=reason,
    )


def run_race(state: State, outcome: Callable[[int], bool]) -> State:
    """Drive a race to its verdict, asking ``outcome(arm)`` for each grasp's success
    (simulations, the operating characteristic and tests; the daemon calls :func:`record`)."""
    while state.winner is None:
        arm = next_arm(state)
        state = record(state, arm, outcome(arm))
    return state
