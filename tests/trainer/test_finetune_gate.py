"""The gate of a fine-tune job: "race" ships the best eligible candidate unless it is clearly
worse than the parent (the robot's race decides), "strict" ships only a child that beats the
parent offline (hand-made curves; the config's validation)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from trainer.early_stop import Candidate
from trainer.finetune import selection
from trainer.finetune.config import FinetuneConfig
from trainer.finetune.selection import PARENT_STEP

RACE = FinetuneConfig()  # gate "race", se_margin 2, race_min_auc 0.55
STRICT = dataclasses.replace(RACE, gate="strict")
PARENT = Candidate(PARENT_STEP, new=0.70, prior=0.80, prior_slack=0.0, prior_bce=0.40, new_auc=0.7)


def entry(step: int, new: float, prior: float = 0.80, auc: float | None = None) -> dict[str, Any]:
    """One validation entry as a training arm logs it (AUC = score unless given)."""
    return {
        "step": step,
        "arm": "noaug",
        "score_new": new,
        "score_prior": prior,
        "prior_slack": 0.0,
        "new": {"auc": new if auc is None else auc},
        "prior": {"bce": 0.40},
    }


def test_the_race_gate_is_the_default() -> None:
    assert FinetuneConfig().gate == "race" and FinetuneConfig().race_min_auc == 0.55


@pytest.mark.parametrize("bad", ["", "Race", "offline", "loose"])
def test_an_unknown_gate_is_refused_naming_the_choices(bad: str) -> None:
    with pytest.raises(ValueError, match="gate must be one of race, strict"):
        FinetuneConfig(gate=bad)  # type: ignore[arg-type]


def test_race_min_auc_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="race_min_auc"):
        FinetuneConfig(race_min_auc=1.5)


def test_a_candidate_slightly_below_the_parent_within_noise_ships_under_the_race_gate() -> None:
    curve = [entry(50, 0.66), entry(100, 0.68), entry(150, 0.67)]  # best 0.02 below the parent
    top = selection.top(RACE, curve, PARENT)
    assert top is not None and top.step == 100
    assert selection.pick(RACE, curve, PARENT) == top
    shipped = selection.ship(RACE, curve, PARENT, se=0.02)  # -0.02 > -2 x 0.02
    assert shipped == top
    assert "within noise" in selection.verdict(RACE, top, shipped, PARENT, 0.02)
    # The strict gate judges the parent itself (nothing scores above it) and refuses.
    assert selection.pick(STRICT, curve, PARENT) == PARENT
    assert selection.ship(STRICT, curve, PARENT, se=0.02) is None


def test_a_candidate_clearly_below_the_parent_does_not_ship() -> None:
    curve = [entry(50, 0.60), entry(100, 0.64)]  # best 0.06 below the parent
    top = selection.top(RACE, curve, PARENT)
    assert top is not None and top.step == 100
    assert selection.ship(RACE, curve, PARENT, se=0.02) is None  # -0.06 < -2 x 0.02
    assert selection.clearly_worse(RACE, top, PARENT, 0.02)
    assert selection.ship(RACE, curve, PARENT, se=0.04) == top  # -0.06 > -2 x 0.04: noise
    assert "clearly worse" in selection.verdict(RACE, top, None, PARENT, 0.02)


def test_a_candidate_ranking_below_the_race_auc_floor_does_not_ship() -> None:
    curve = [entry(50, 0.71, auc=0.54)]  # above the parent's score but ranks near chance
    assert selection.ship(RACE, curve, PARENT, se=0.02) is None
    assert selection.ship(dataclasses.replace(RACE, race_min_auc=0.5), curve, PARENT, 0.02)


def test_forgetting_still_filters_under_the_race_gate() -> None:
    forgetful = entry(100, 0.90, prior=0.70)  # far better on new data, loses 0.10 on prior
    steady = entry(50, 0.69)
    assert selection.top(RACE, [forgetful], PARENT) is None
    assert selection.pick(RACE, [forgetful], PARENT) == PARENT
    assert selection.ship(RACE, [forgetful], PARENT, se=0.0) is None
    assert "forgetting rule" in selection.verdict(RACE, PARENT, None, PARENT, 0.0)
    shipped = selection.ship(RACE, [forgetful, steady], PARENT, se=0.01)
    assert shipped is not None and shipped.step == 50


def test_the_strict_gate_is_unchanged() -> None:
    curve = [entry(50, 0.75), entry(100, 0.80), entry(150, 0.78)]
    for se, want in ((0.01, 100), (0.06, None)):
        got = selection.ship(STRICT, curve, PARENT, se)
        assert (got.step if got else None) == want
        assert got == selection.choose(STRICT, curve, PARENT, se)
    assert selection.pick(STRICT, curve, PARENT) == selection.best(STRICT, curve, PARENT)


def test_the_race_gate_ships_everything_the_strict_gate_ships() -> None:
    lax = dataclasses.replace(RACE, min_auc=0.0)  # strict would ship an AUC of 0.5 ...
    curve = [entry(50, 0.80, auc=0.5)]
    assert selection.choose(lax, curve, PARENT, se=0.0) is not None
    assert selection.ship(lax, curve, PARENT, se=0.0) is not None  # ... so the race gate does


def test_arms_keep_the_first_eligible_candidate_only_under_the_race_gate() -> None:
    below = Candidate(10, 0.60, 0.80, 0.0, 0.40, 0.60)
    assert selection.keeps(RACE, below, PARENT, PARENT_STEP, PARENT.new)
    assert not selection.keeps(STRICT, below, PARENT, PARENT_STEP, PARENT.new)
    assert not selection.keeps(RACE, below, PARENT, 20, 0.65)  # a better one is kept already
    forgetful = Candidate(10, 0.90, 0.60, 0.0, 0.40, 0.90)
    assert not selection.keeps(RACE, forgetful, PARENT, PARENT_STEP, PARENT.new)


def test_considered_lists_the_judged_step_and_its_best_runners_up() -> None:
    curve = [entry(50, 0.66), entry(100, 0.68), entry(150, 0.67), entry(200, 0.90, prior=0.6)]
    top = selection.top(RACE, curve, PARENT)
    assert top is not None
    rows = selection.considered(RACE, curve, PARENT, top, se=0.005)
    assert [r["step"] for r in rows] == [100, 200, 150]
    assert rows[0] == {
        "step": 100,
        "score_new": 0.68,
        "gain": pytest.approx(-0.02),
        "score_prior": 0.8,
        "eligible": True,
        "clearly_worse": True,  # -0.02 < -2 x 0.005
    }
    assert rows[1]["eligible"] is False and rows[1]["clearly_worse"] is False
    assert len(selection.considered(RACE, curve[:1], PARENT, PARENT, 0.0)) == 1


def test_rule_text_names_the_race_gate_only_under_it() -> None:
    assert "race gate" in selection.rule_text(RACE) and "0.55" in selection.rule_text(RACE)
    assert "race gate" not in selection.rule_text(STRICT)


def test_the_gate_is_set_from_the_cli_and_the_services_finetune_table() -> None:
    from trainer.cli import build_parser, from_options
    from trainer.service.server import build_options

    argv = ["finetune", "--parent", "p", "--new", "n", "--out", "o", "--gate", "strict"]
    cfg = from_options(FinetuneConfig, build_parser().parse_args([*argv, "--race-min-auc", "0.6"]))
    assert (cfg.gate, cfg.race_min_auc) == ("strict", 0.6)
    assert build_options(FinetuneConfig, {"gate": "strict"}).gate == "strict"
    with pytest.raises(ValueError, match="gate must be one of"):
        build_options(FinetuneConfig, {"gate": "offline"})
