"""The pure selection of a fine-tune job: the parent as candidate zero, the forgetting rule with
its trade, the winner's margin, the shift guard and the augmentation probe (hand-made curves)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from trainer.early_stop import Candidate
from trainer.finetune import selection
from trainer.finetune.config import FinetuneConfig
from trainer.finetune.selection import PARENT_STEP

CFG = FinetuneConfig()  # prior_tolerance 0.02, trade 0.1 capped at 0.05, BCE x1.15, AUC >= 0.6
PARENT = Candidate(PARENT_STEP, new=0.70, prior=0.80, prior_slack=0.0, prior_bce=0.40, new_auc=0.7)


def entry(
    step: int,
    new: float,
    prior: float = 0.80,
    bce: float = 0.40,
    auc: float = 0.80,
    slack: float = 0.0,
) -> dict[str, Any]:
    """One validation entry as a training arm logs it."""
    return {
        "step": step,
        "arm": "noaug",
        "score_new": new,
        "score_prior": prior,
        "prior_slack": slack,
        "new": {"auc": auc},
        "prior": {"bce": bce},
    }


def test_children_no_better_than_the_parent_leave_the_parent_in_place() -> None:
    curve = [entry(50, 0.60), entry(100, 0.69), entry(150, 0.70)]  # the last only ties
    assert selection.best(CFG, curve, PARENT) == PARENT
    assert selection.choose(CFG, curve, PARENT, se=0.0) is None
    assert selection.best(CFG, [], PARENT).step == PARENT_STEP


def test_the_best_child_ships_only_when_its_gain_beats_the_noise() -> None:
    curve = [entry(50, 0.75), entry(100, 0.80), entry(150, 0.78)]
    assert selection.best(CFG, curve, PARENT).step == 100
    shipped = selection.choose(CFG, curve, PARENT, se=0.01)  # gain 0.10 > 2 x 0.01
    assert shipped is not None and shipped.step == 100
    assert selection.choose(CFG, curve, PARENT, se=0.06) is None  # gain 0.10 < 2 x 0.06
    tiny = [entry(50, 0.704)]  # above the parent, below min_gain (0.005)
    assert selection.choose(CFG, tiny, PARENT, se=0.0) is None


def test_a_child_ranking_new_grasps_worse_than_min_auc_is_not_shipped() -> None:
    curve = [entry(50, 0.90, auc=0.55)]
    assert selection.best(CFG, curve, PARENT).step == 50
    assert selection.choose(CFG, curve, PARENT, se=0.0) is None


def test_forgetting_rule_refuses_a_child_whose_prior_score_falls_beyond_its_bound() -> None:
    forgetful = entry(50, 0.95, prior=0.80 - 0.06)  # beyond the cap (0.05) of any trade
    modest = entry(100, 0.78, prior=0.80 - 0.01)  # within prior_tolerance
    cands = selection.candidates([forgetful, modest])
    assert not selection.eligible(CFG, cands[0], PARENT)
    assert selection.eligible(CFG, cands[1], PARENT)
    assert selection.best(CFG, [forgetful, modest], PARENT).step == 100
    assert selection.best(CFG, [forgetful], PARENT) == PARENT


def test_forgetting_rule_allows_the_documented_trade_of_prior_for_new_score() -> None:
    fall = 0.025  # above prior_tolerance (0.02), so only the trade can allow it
    big_gain = entry(50, PARENT.new + 0.30, prior=0.80 - fall)  # trade allows 0.1 x 0.30 = 0.03
    small_gain = entry(50, PARENT.new + 0.10, prior=0.80 - fall)  # trade allows 0.01 only
    assert selection.choose(CFG, [big_gain], PARENT, se=0.0) is not None
    assert selection.choose(CFG, [small_gain], PARENT, se=0.0) is None
    no_trade = FinetuneConfig(prior_trade=0.0)
    assert selection.choose(no_trade, [big_gain], PARENT, se=0.0) is None


def test_forgetting_rule_noise_allowance_is_the_candidates_prior_slack() -> None:
    noisy = entry(50, 0.80, prior=0.80 - 0.04, slack=0.05)
    assert selection.best(CFG, [noisy], PARENT).step == 50
    assert selection.best(CFG, [{**noisy, "prior_slack": 0.0}], PARENT) == PARENT


def test_forgetting_rule_refuses_a_child_confidently_wrong_on_prior_grasps() -> None:
    overconfident = entry(50, 0.85, prior=0.80, bce=0.40 * 1.25)  # ranks prior grasps as well
    assert not selection.eligible(CFG, selection.candidates([overconfident])[0], PARENT)
    assert selection.best(CFG, [overconfident], PARENT) == PARENT
    assert selection.best(CFG, [entry(50, 0.85, bce=0.40 * 1.1)], PARENT).step == 50


def test_candidates_without_a_prior_slice_have_no_prior_bce() -> None:
    bare = {k: v for k, v in entry(50, 0.8).items() if k != "prior"}
    (cand,) = selection.candidates([bare])
    assert cand.prior_bce == 0.0 and cand.new_auc == 0.8 and cand.step == 50


def test_shift_guard_keeps_a_shift_only_when_it_beats_plain_finetuning() -> None:
    shifted = [entry(0, 0.75), entry(50, 0.80)]
    plain = [entry(50, 0.89)]
    keep, a, b = selection.keep_shift(shifted, plain, until=50)
    assert (keep, a, b) == (False, 0.80, 0.89)
    keep, a, b = selection.keep_shift([entry(0, 0.86), entry(50, 0.84)], [entry(50, 0.31)], 50)
    assert (keep, a, b) == (True, 0.86, 0.31)
    assert selection.keep_shift([entry(50, 0.5)], [entry(50, 0.5)], 50)[0]  # ties: the shift
    later = [entry(50, 0.40), entry(100, 0.99)]  # past the probe: not counted
    assert selection.keep_shift([entry(50, 0.5)], later, 50) == (True, 0.5, 0.40)
    assert selection.keep_shift([], [entry(50, 0.1)], 50)[0] is False


def test_augmentation_probe_continues_the_better_arm_and_keeps_augmentation_on_ties() -> None:
    assert selection.keep_augment(0.8, 0.7) and selection.keep_augment(0.7, 0.7)
    assert not selection.keep_augment(0.6, 0.7)
    assert selection.best_score([entry(50, 0.3), entry(100, 0.9)], 50) == 0.3
    assert selection.best_score([], 50) == float("-inf")


def test_rule_text_records_the_configs_numbers() -> None:
    text = selection.rule_text(FinetuneConfig(prior_tolerance=0.03, min_auc=0.65))
    assert "max(0.03," in text and "AUC >= 0.65" in text


@pytest.mark.parametrize("banned", ["trainer.finetune.run", "trainer.finetune.data", "torch"])
def test_selection_imports_neither_the_runner_nor_the_data_module(banned: str) -> None:
    src = Path(selection.__file__).read_text()
    names = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    assert not any(n == banned or n.startswith(banned + ".") for n in names), names
