"""Which fine-tuned network ships, if any: pure decisions over validation curves (no I/O).

A fine-tune job validates its training arm every ``eval_every`` steps; each
validation is a curve entry (``step``, ``score_new``, ``score_prior``,
``prior_slack``, ``new`` and ``prior`` summaries; see
:func:`trainer.finetune.data.score_candidate`) and so a candidate. The parent
is candidate zero (:data:`PARENT_STEP`). Under the strict gate a child ships
only when it beats the parent offline; under the race gate (the default) one
within noise of the parent ships too and the agent's race against the parent
on the robot decides, so a worse child is caught there, not here.

- The forgetting rule (:func:`eligible`): a candidate's prior-slice score may
  fall below the parent's by at most the largest of ``prior_tolerance``, its
  noise allowance and the trade (``prior_trade`` x its new-data gain, capped at
  ``prior_trade_cap``); its prior-slice BCE may rise at most to
  ``prior_bce_ratio`` x the parent's.
- The winner (:func:`best`, then :func:`choose`): the eligible candidate with
  the best held-out new-data score ships when its gain over the parent exceeds
  ``max(min_gain, se_margin x SE)`` and its new-data AUC reaches ``min_auc``.
- The race gate (``gate = "race"``, :func:`ship`): a filter, not the judge. The
  eligible candidate with the best new-data score (:func:`top`, even below the
  parent's) ships unless it is clearly worse (:func:`clearly_worse`: score below
  the parent's by more than ``se_margin x SE``, or AUC below ``race_min_auc``);
  the agent then races it against the parent on the robot. ``"strict"`` ships
  :func:`choose`'s winner only. :func:`considered` and :func:`verdict` say why.
- The shift guard (:func:`keep_shift`): an adopted action shift stays only when
  its arm scores at least as well as plain fine-tuning over the probe steps.
- The augmentation probe (:func:`keep_augment`): the better arm continues.

The measures and the rule's arithmetic live in :mod:`trainer.early_stop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainer import early_stop
from trainer.early_stop import Candidate
from trainer.finetune.config import FinetuneConfig

PARENT_STEP = -1
"""Step number of the parent (candidate zero) in the selection; step 0 is "shift only"."""

Curve = Sequence[dict[str, Any]]
"""Validation entries of one arm, in step order."""


def trade(cfg: FinetuneConfig) -> early_stop.Trade:
    """The prior-for-new trade ``cfg`` allows (``prior_trade`` capped at ``prior_trade_cap``)."""
    return early_stop.Trade(cfg.prior_trade, cfg.prior_trade_cap)


def eligible(cfg: FinetuneConfig, cand: Candidate, parent: Candidate) -> bool:
    """Whether ``cand`` passes the forgetting rule against ``parent`` (see the module doc)."""
    return early_stop.eligible(cand, parent, cfg.prior_tolerance, cfg.prior_bce_ratio, trade(cfg))


def candidates(curve: Curve) -> list[Candidate]:
    """The candidates a curve's entries describe (prior BCE 0 when there was no prior data)."""
    return [
        Candidate(
            e["step"],
            e["score_new"],
            e["score_prior"],
            e["prior_slack"],
            float(e["prior"]["bce"]) if "prior" in e else 0.0,
            float(e["new"]["auc"]),
        )
        for e in curve
    ]


def best(cfg: FinetuneConfig, curve: Curve, parent: Candidate) -> Candidate:
    """The eligible candidate with the best new-data score (earliest on ties), or ``parent``
    when none scores above it. Its gain still has to pass :func:`choose` to ship."""
    return early_stop.best_candidate(
        candidates(curve), parent, cfg.prior_tolerance, cfg.prior_bce_ratio, trade(cfg)
    )


def choose(cfg: FinetuneConfig, curve: Curve, parent: Candidate, se: float) -> Candidate | None:
    """The candidate that ships, or None (keep the parent).

    ``se`` is the paired bootstrap SE of the :func:`best` candidate's new-data score
    minus the parent's on the held-out new grasps. The winner is :func:`best`'s pick
    when it is not the parent, its gain exceeds ``max(min_gain, se_margin x se)`` and
    its new-data AUC is at least ``min_auc``.
    """
    return early_stop.choose(
        candidates(curve),
        parent,
        cfg.prior_tolerance,
        cfg.min_gain,
        se,
        cfg.se_margin,
        cfg.prior_bce_ratio,
        cfg.min_auc,
        trade(cfg),
    )


def top(cfg: FinetuneConfig, curve: Curve, parent: Candidate) -> Candidate | None:
    """The eligible non-parent candidate with the best new-data score (earliest on ties),
    even below the parent's; None when none passes the forgetting rule."""
    return early_stop.top_candidate(
        candidates(curve), parent, cfg.prior_tolerance, cfg.prior_bce_ratio, trade(cfg)
    )


def pick(cfg: FinetuneConfig, curve: Curve, parent: Candidate) -> Candidate:
    """The candidate the gate judges (its paired SE is measured): :func:`best` under the
    strict gate, :func:`top` under the race gate; ``parent`` when there is none."""
    if cfg.gate == "strict":
        return best(cfg, curve, parent)
    return top(cfg, curve, parent) or parent


def keeps(
    cfg: FinetuneConfig, cand: Candidate, parent: Candidate, best_step: int, best_new: float
) -> bool:
    """Whether a training arm keeps ``cand``'s weights as its best so far (the running
    :func:`pick`): eligible and above ``best_new``; under the race gate also the first
    eligible candidate when none is kept yet (``best_step`` is the parent's)."""
    if not eligible(cfg, cand, parent):
        return False
    return cand.new > best_new or (cfg.gate == "race" and best_step == PARENT_STEP)


def clearly_worse(cfg: FinetuneConfig, cand: Candidate, parent: Candidate, se: float) -> bool:
    """The race gate's refusal: ``cand``'s new-data score is below the parent's by more
    than ``se_margin`` x ``se``, or its new-data AUC is below ``race_min_auc``."""
    return early_stop.clearly_worse(cand, parent, se, cfg.se_margin, cfg.race_min_auc)


def ship(cfg: FinetuneConfig, curve: Curve, parent: Candidate, se: float) -> Candidate | None:
    """The candidate that ships under ``cfg.gate``, or None (keep the parent); ``se`` is
    the paired bootstrap SE of :func:`pick`'s new-data score minus the parent's."""
    if cfg.gate == "strict":
        return choose(cfg, curve, parent, se)
    cand = top(cfg, curve, parent)
    if cand is None:
        return None
    if choose(cfg, curve, parent, se) is not None or not clearly_worse(cfg, cand, parent, se):
        return cand  # whatever the strict gate ships ships too: the race gate only adds
    return None


def considered(
    cfg: FinetuneConfig, curve: Curve, parent: Candidate, judged: Candidate, se: float, n: int = 3
) -> list[dict[str, Any]]:
    """The judged candidate and the best-scoring other curve points (``n`` at most, best
    first after the judged one), each with its gain over the parent, whether it passes the
    forgetting rule and whether it is clearly worse (with the judged candidate's ``se``:
    only the judged one's SE is measured)."""
    cands = candidates(curve)
    rest = sorted((c for c in cands if c.step != judged.step), key=lambda c: (-c.new, c.step))
    chosen = [c for c in cands if c.step == judged.step][:1] + rest
    return [
        {
            "step": c.step,
            "score_new": round(c.new, 6),
            "gain": round(c.new - parent.new, 6),
            "score_prior": round(c.prior, 6),
            "eligible": eligible(cfg, c, parent),
            "clearly_worse": clearly_worse(cfg, c, parent, se),
        }
        for c in chosen[:n]
    ]


def verdict(
    cfg: FinetuneConfig, judged: Candidate, shipped: Candidate | None, parent: Candidate, se: float
) -> str:
    """The gate's decision in words (recorded in the child's meta)."""
    if judged.step == parent.step:
        if cfg.gate == "race":
            return "no candidate passes the forgetting rule: the parent stays"
        return "no eligible candidate scores above the parent: the parent stays"
    gain = judged.new - parent.new
    bar = max(cfg.min_gain, cfg.se_margin * se)
    beats = early_stop.beats(gain, se, cfg.min_gain, cfg.se_margin)
    if shipped is not None and beats and judged.new_auc >= cfg.min_auc:
        tail = ": the robot's race confirms it" if cfg.gate == "race" else ""
        return f"beats the parent offline (gain {gain:+.4f} > {bar:.4f}){tail}"
    if shipped is not None:
        return (
            f"within noise of the parent (gain {gain:+.4f}, {cfg.se_margin} x SE = "
            f"{cfg.se_margin * se:.4f}): the robot decides"
        )
    if cfg.gate == "race":
        return (
            f"clearly worse than the parent (gain {gain:+.4f} < -{cfg.se_margin * se:.4f} or "
            f"AUC {judged.new_auc:.3f} < {cfg.race_min_auc}): the parent stays"
        )
    return (
        f"does not beat the parent offline (gain {gain:+.4f} <= {bar:.4f} or AUC "
        f"{judged.new_auc:.3f} < {cfg.min_auc}): the parent stays"
    )


def rule_text(cfg: FinetuneConfig) -> str:
    """The selection rule in words with ``cfg``'s numbers (recorded in the child's meta)."""
    return (
        "best held-out new-data score among candidates whose prior-slice score fell "
        f"at most max({cfg.prior_tolerance}, {cfg.se_margin} x its bootstrap SE, "
        f"min({cfg.prior_trade_cap}, {cfg.prior_trade} x its new-score gain)) and "
        f"whose prior-slice BCE is at most {cfg.prior_bce_ratio} x the parent's; wins "
        f"if gain > max({cfg.min_gain}, {cfg.se_margin} x SE) and its AUC >= "
        f"{cfg.min_auc}"
        + (
            ""
            if cfg.gate == "strict"
            else f"; race gate: else it ships unless its score is below the parent's by more "
            f"than {cfg.se_margin} x SE or its AUC < {cfg.race_min_auc} (the robot decides)"
        )
    )


def best_score(curve: Curve, until: int) -> float:
    """The best held-out new-data score among the entries up to step ``until`` (-inf: none)."""
    scores = [float(e["score_new"]) for e in curve if e["step"] <= until]
    return max(scores) if scores else float("-inf")


def keep_shift(shifted: Curve, plain: Curve, until: int) -> tuple[bool, float, float]:
    """(keep, best shifted score, best unshifted score) over the two probe curves' entries up
    to step ``until``: the shift stays when its arm scores at least as well (ties: shift)."""
    a, b = best_score(shifted, until), best_score(plain, until)
    return a >= b, a, b


def keep_augment(aug: float, noaug: float) -> bool:
    """Whether training continues with augmentation, given each probe arm's best score
    (ties keep it: it is the recipe's default)."""
    return aug >= noaug
