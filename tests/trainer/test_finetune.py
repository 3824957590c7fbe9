"""Fine-tuning: the recipe's mix and learning rate, early stopping, resume, the CLI (tiny nets)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.bundle import validate_bundle
from agent.spec import DEFAULT_SPEC
from testkit.qnet import TINY
from trainer.cli import main
from trainer.dataset import Episode, EpisodeWriter, Step
from trainer.early_stop import Candidate, Trade, auc, choose, eligible
from trainer.export import make_bundle
from trainer.finetune import FinetuneConfig, finetune
from trainer.finetune.data import open_data
from trainer.pretrain import PretrainConfig
from trainer.qnet import QNet

torch.set_num_threads(1)

FAST = FinetuneConfig(
    max_steps=60,
    eval_every=10,
    patience=3,
    batch_size=16,
    probe_steps=20,
    threads=1,
    checkpoint_every=10,
    max_eval=256,
    shift_search=False,  # a random tiny parent has no grasp knowledge to shift
)


def _parent(root: Path) -> Path:
    torch.manual_seed(0)
    return make_bundle(QNet(TINY).eval(), {"condition": "baseline"}, root).path


def _dataset(root: Path, n: int, seed: int, learnable: bool, condition: str) -> Path:
    """``n`` one-step grasps; learnable: success iff the image is bright; else coin flips."""
    rng = np.random.default_rng(seed)
    with EpisodeWriter(root, DEFAULT_SPEC) as w:
        for _ in range(n):
            ok = bool(rng.random() < 0.5)
            if learnable:
                level = rng.integers(170, 255) if ok else rng.integers(0, 85)
                image = np.full((64, 64, 3), level, np.uint8)
            else:
                image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            w.append(
                Episode(
                    steps=(
                        Step(
                            image=image,
                            action=rng.uniform(-1, 1, 3).astype(np.float32),
                            reward=float(ok),
                            done=True,
                        ),
                    ),
                    success=ok,
                    condition=condition,
                    policy_id="p",
                    timestamp=0.0,
                )
            )
    return root


def test_recipe_batches_are_half_prior_half_new(tmp_path: Path) -> None:
    new = _dataset(tmp_path / "new", 60, 1, True, "c")
    prior = [
        _dataset(tmp_path / "base", 90, 2, True, "baseline"),
        _dataset(tmp_path / "c0", 30, 3, True, "old"),
    ]
    data = open_data(FinetuneConfig(batch_size=128), [new], prior)
    sampler = data.sampler
    names = [ds.name for ds in sampler.sources]
    is_prior = np.array(["new" not in n for n in names])
    assert sampler.weights[is_prior].sum() == pytest.approx(0.5)
    assert sampler.weights[~is_prior].sum() == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    per_batch = [int(sampler.counts(rng)[is_prior].sum()) for _ in range(400)]
    assert np.mean(per_batch) == pytest.approx(64, abs=1.0)
    assert data.counts["batch_shares"] == {"prior": 0.5, "new": 0.5}


def test_no_prior_data_means_all_new(tmp_path: Path) -> None:
    new = _dataset(tmp_path / "new", 40, 1, True, "c")
    data = open_data(FinetuneConfig(), [new], [])
    assert data.sampler.weights.sum() == pytest.approx(1.0)
    assert data.counts["batch_shares"]["prior"] == 0.0


def test_finetune_optimiser_runs_at_a_quarter_of_the_pretraining_rate(tmp_path: Path) -> None:
    assert FinetuneConfig().lr == pytest.approx(0.25 * PretrainConfig().lr)
    seen: list[float] = []
    new = _dataset(tmp_path / "new", 40, 1, True, "c")
    cfg = FinetuneConfig(**{**FAST.__dict__, "max_steps": 10, "augment": "off"})
    finetune(
        cfg,
        _parent(tmp_path / "b"),
        new,
        [],
        tmp_path / "job",
        progress=lambda p: seen.append(p["lr"]),
    )
    assert seen and all(lr == pytest.approx(0.25 * PretrainConfig().lr) for lr in seen)


def test_strict_early_stopping_returns_no_improvement_on_noise(tmp_path: Path) -> None:
    new = _dataset(tmp_path / "new", 400, 1, False, "c")
    prior = _dataset(tmp_path / "base", 200, 2, False, "baseline")
    strict = dataclasses.replace(FAST, gate="strict")
    res = finetune(strict, _parent(tmp_path / "b"), new, [prior], tmp_path / "job")
    assert res.status == "no_improvement"
    assert res.bundle_path is None and res.bundle_id is None
    assert not (tmp_path / "job" / "bundles").exists()
    assert res.meta["validation"]["curve"]
    assert res.meta["validation"]["gate"] == "strict"
    assert "the parent stays" in res.meta["validation"]["verdict"]


def test_the_race_gate_ships_a_child_within_noise_that_the_strict_gate_refuses(
    tmp_path: Path,
) -> None:
    """A margin of 50 SE: no gain passes the strict gate, a child not below the parent
    passes the race gate's filter; on coin-flip data an AUC floor of 0.9 refuses it."""
    new = _dataset(tmp_path / "new", 80, 1, True, "c")
    noise = _dataset(tmp_path / "noise", 80, 3, False, "c")
    prior = _dataset(tmp_path / "base", 80, 2, True, "baseline")
    parent = _parent(tmp_path / "b")
    wide = dataclasses.replace(FAST, se_margin=50.0, augment="off")
    runs = {
        "strict": (dataclasses.replace(wide, gate="strict"), new),
        "race": (wide, new),
        "floor": (dataclasses.replace(wide, race_min_auc=0.9), noise),
    }
    res = {k: finetune(c, parent, d, [prior], tmp_path / k) for k, (c, d) in runs.items()}
    assert res["strict"].status == "no_improvement"
    assert res["race"].status == "improved" and res["race"].bundle_path is not None
    assert res["floor"].status == "no_improvement"
    v = validate_bundle(res["race"].bundle_path).meta["validation"]
    assert v["gate"] == "race" and "the robot decides" in v["verdict"]
    assert 1 <= len(v["candidates"]) <= 3
    shipped = v["candidates"][0]
    assert shipped["step"] == v["chosen"]["step"] == v["best_step"]
    assert shipped["eligible"] and not shipped["clearly_worse"]
    assert set(shipped) == {"step", "score_new", "gain", "score_prior", "eligible", "clearly_worse"}
    assert "clearly worse" in res["floor"].meta["validation"]["verdict"]


def test_learnable_new_data_gives_a_valid_child_with_lineage(tmp_path: Path) -> None:
    new = _dataset(tmp_path / "new", 80, 1, True, "c")
    prior = _dataset(tmp_path / "base", 80, 2, True, "baseline")
    parent = _parent(tmp_path / "b")
    res = finetune(FAST, parent, new, [prior], tmp_path / "job", job_id="j1", condition="anon-1")
    assert res.status == "improved" and res.bundle_path is not None
    child = validate_bundle(res.bundle_path)
    assert child.id == res.bundle_id
    assert child.parent_id == validate_bundle(parent).id
    m = child.meta
    assert m["job_id"] == "j1" and m["condition"] == "anon-1"
    assert m["training"]["chosen_step"] > 0
    assert m["training"]["steps_run"] >= m["training"]["chosen_step"]
    assert m["data"]["new"][0]["episodes"] == 80 and m["data"]["prior"][0]["episodes"] == 80
    assert m["validation"]["chosen"]["score_new"] > m["validation"]["parent"]["score_new"]
    assert set(m["training"]["augment_probe"]) == {"aug", "noaug"}


def test_stopped_finetune_resumes_from_its_checkpoint_with_the_same_result(tmp_path: Path) -> None:
    new = _dataset(tmp_path / "new", 80, 1, True, "c")
    prior = _dataset(tmp_path / "base", 80, 2, True, "baseline")
    parent = _parent(tmp_path / "b")
    whole = finetune(FAST, parent, new, [prior], tmp_path / "whole")
    stop = threading.Event()

    def progress(p: dict[str, Any]) -> None:
        if p["phase"] == "train" and p["step"] >= 25:
            stop.set()

    job = tmp_path / "job"
    first = finetune(FAST, parent, new, [prior], job, progress=progress, stop=stop)
    assert first.status == "stopped"
    state = (
        json.loads((job / "arm-aug" / "checkpoint" / "checkpoint.json").read_text())
        if (job / "arm-aug" / "checkpoint").exists()
        else json.loads((job / "arm-noaug" / "checkpoint" / "checkpoint.json").read_text())
    )
    assert state["steps"] >= 25
    again = finetune(FAST, parent, new, [prior], job)
    assert again.status == whole.status
    assert again.bundle_id == whole.bundle_id
    assert again.meta["validation"]["curve"] == whole.meta["validation"]["curve"]
    # Finished: a further call returns the stored result without training.
    t0 = time.time()
    assert finetune(FAST, parent, new, [prior], job).bundle_id == whole.bundle_id
    assert time.time() - t0 < 2.0


def test_a_different_job_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    new = _dataset(tmp_path / "new", 40, 1, True, "c")
    parent = _parent(tmp_path / "b")
    stop = threading.Event()
    stop.set()
    finetune(FAST, parent, new, [], tmp_path / "job", stop=stop)
    with pytest.raises(ValueError, match="different fine-tune job"):
        finetune(FinetuneConfig(seed=5), parent, new, [], tmp_path / "job", stop=stop)


def test_cli_finetune_prints_one_json_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = _dataset(tmp_path / "new", 60, 1, True, "c")
    parent = _parent(tmp_path / "b")
    argv = ["finetune", "--parent", str(parent), "--new", str(new), "--out", str(tmp_path / "j")]
    argv += ["--max-steps", "20", "--eval-every", "10", "--batch-size", "16", "--augment", "off"]
    argv += ["--init", "scratch", "--threads", "1"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out.strip())
    assert res["status"] in ("improved", "no_improvement")
    assert res["meta"]["training"]["init"] == "scratch"
    assert '"phase": "train"' in cap.err


def test_auc_and_selection_rule() -> None:
    y = np.array([0, 0, 1, 1], dtype=np.float64)
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), y) == 1.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), y) == 0.5
    parent = Candidate(0, 0.6, 0.9)
    forgetful = Candidate(100, 0.9, 0.8)  # best on new data but loses 0.1 on prior
    steady = Candidate(50, 0.7, 0.89)
    assert choose([steady, forgetful], parent, 0.02, 0.005, 0.01, 1.5) == steady
    assert choose([steady], parent, 0.02, 0.005, 0.2, 1.5) is None  # within noise


def test_forgetting_rule_bounds_prior_bce_and_winner_must_beat_chance() -> None:
    parent = Candidate(-1, 0.30, 0.77, 0.0, prior_bce=0.44, new_auc=0.30)
    # Ranks prior grasps as well as the parent but grew confidently wrong about them.
    forgetful = Candidate(1000, 0.55, 0.76, 0.05, prior_bce=0.97, new_auc=0.55)
    assert choose([forgetful], parent, 0.02, 0.005, 0.01, 2.0, bce_ratio=1.15) is None
    # Keeps the prior but only climbs from worse-than-chance to chance on the new data.
    chance = Candidate(400, 0.55, 0.77, 0.05, prior_bce=0.45, new_auc=0.55)
    assert choose([chance], parent, 0.02, 0.005, 0.01, 2.0, 1.15, min_auc=0.6) is None
    good = Candidate(100, 0.85, 0.77, 0.05, prior_bce=0.47, new_auc=0.85)
    assert choose([chance, good], parent, 0.02, 0.005, 0.01, 2.0, 1.15, 0.6) == good


def test_a_large_new_gain_may_buy_a_small_prior_loss_but_never_a_large_one() -> None:
    """Regression: a lineage's checkerboard job gained +0.49 held-out AUC (0.40 -> 0.89) for
    -0.028 on the prior slice and returned "no improvement" under the flat 0.02 rule."""
    trade = Trade(share=0.1, cap=0.05)
    parent = Candidate(-1, 0.40, 0.821, 0.0, prior_bce=0.45, new_auc=0.40)
    big = Candidate(50, 0.89, 0.793, 0.018, prior_bce=0.47, new_auc=0.89)
    assert choose([big], parent, 0.02, 0.005, 0.1, 2.0, 1.15, 0.6) is None  # flat rule
    assert choose([big], parent, 0.02, 0.005, 0.1, 2.0, 1.15, 0.6, trade) == big
    small = Candidate(50, 0.50, 0.793, 0.018, prior_bce=0.47, new_auc=0.62)  # gain 0.10
    assert not eligible(small, parent, 0.02, 1.15, trade)  # allows 0.01 < 0.028
    huge_loss = Candidate(50, 0.99, 0.76, 0.018, prior_bce=0.47, new_auc=0.99)
    assert not eligible(huge_loss, parent, 0.02, 1.15, trade)  # the cap: 0.05 < 0.061
    assert trade.allowance(big, parent) == pytest.approx(0.049)


def test_a_job_stored_before_the_gate_existed_resumes_only_under_the_strict_gate(
    tmp_path: Path,
) -> None:
    new = _dataset(tmp_path / "new", 40, 1, True, "c")
    parent = _parent(tmp_path / "b")
    stop = threading.Event()
    stop.set()
    strict = dataclasses.replace(FAST, gate="strict")
    finetune(strict, parent, new, [], tmp_path / "job", stop=stop)
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    for k in ("gate", "race_min_auc"):
        del job["config"][k]  # as an older trainer wrote it
    (tmp_path / "job" / "job.json").write_text(json.dumps(job))
    assert finetune(strict, parent, new, [], tmp_path / "job", stop=stop).status == "stopped"
    with pytest.raises(ValueError, match="different fine-tune job"):
        finetune(FAST, parent, new, [], tmp_path / "job", stop=stop)
