"""A fine-tune job's data: the training mixture, the held-out sets, and scoring on them.

The new condition's episodes are split by outcome (stratified) into training
and held-out episodes; the prior episodes keep a held-out slice to measure
forgetting. Every batch draws ``prior_share`` from the prior and the rest from
the new data. A candidate network is scored on both held-out sets
(:func:`score_candidate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from trainer import early_stop
from trainer.dataset import Batch, EpisodeDataset, concat_batches
from trainer.early_stop import Candidate
from trainer.finetune.config import FinetuneConfig
from trainer.learner import Learner
from trainer.sampler import MixtureSampler


def view_rows(ds: EpisodeDataset) -> npt.NDArray[np.int64]:
    """The view's dataset-wide transition rows."""
    return ds._rows  # no public accessor in dataset.py


def episode_groups(ds: EpisodeDataset, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The episode key of each of ``rows`` (bootstrap groups)."""
    return ds._episode_keys()[rows]


def count(ds: EpisodeDataset) -> dict[str, int]:
    """Transitions, episodes and successful episodes of ``ds`` (for the child's meta)."""
    succ = ds.filter(success=True)
    return {
        "transitions": len(ds),
        "episodes": len(np.unique(episode_groups(ds, view_rows(ds)))),
        "successes": len(np.unique(episode_groups(succ, view_rows(succ)))),
    }


@dataclass
class Data:
    """Training sources and the fixed held-out batches."""

    sampler: MixtureSampler
    held_new: Batch
    held_new_groups: npt.NDArray[np.int64]
    held_prior: Batch | None
    held_prior_groups: npt.NDArray[np.int64]
    counts: dict[str, Any]
    new_train: list[EpisodeDataset]
    n_new_sources: int


def stratified(
    ds: EpisodeDataset, share: float, seed: int
) -> tuple[list[EpisodeDataset], list[EpisodeDataset]]:
    """(training views, held-out views): ``share`` of each outcome's episodes held out."""
    train, held = [], []
    for ok in (True, False):
        v = ds.filter(success=ok)
        if len(v) == 0:
            continue
        tr, he = v.split_episodes(share, seed=seed)
        train.append(tr)
        held.append(he)
    return train, held


def held_batch(
    views: list[EpisodeDataset], cap: int, seed: int
) -> tuple[Batch | None, npt.NDArray[np.int64]]:
    """At most ``cap`` transitions drawn from ``views`` in proportion, with their episode
    groups (distinct across views); (None, empty) when the views are empty."""
    rng = np.random.default_rng([seed, 99])
    parts, groups = [], []
    total = sum(len(v) for v in views)
    for i, v in enumerate(views):
        if len(v) == 0:
            continue
        rows = view_rows(v)
        k = min(len(rows), max(1, round(cap * len(rows) / max(total, 1))))
        pick = np.sort(rng.choice(rows, size=k, replace=False))
        parts.append(v.gather(pick))
        groups.append(episode_groups(v, pick) + i * 10_000_000)
    if not parts:
        return None, np.zeros(0, np.int64)
    return (parts[0] if len(parts) == 1 else concat_batches(parts)), np.concatenate(groups)


def open_data(cfg: FinetuneConfig, new: Sequence[Path], prior: Sequence[Path]) -> Data:
    """Open the episode stores and split them; raises ValueError on unusable data."""
    new_ds = [EpisodeDataset.open(p) for p in new]
    prior_ds = [EpisodeDataset.open(p) for p in prior]
    if not new_ds or sum(len(d) for d in new_ds) == 0:
        raise ValueError("fine-tuning needs new-condition data")
    new_train: list[EpisodeDataset] = []
    new_held: list[EpisodeDataset] = []
    for d in new_ds:
        tr, he = stratified(d, cfg.holdout, cfg.seed)
        new_train += tr
        new_held += he
    prior_train: list[EpisodeDataset] = []
    prior_held: list[EpisodeDataset] = []
    for d in prior_ds:
        if len(d):
            ptr, phe = d.split_episodes(cfg.prior_holdout, seed=cfg.seed)
            prior_train.append(ptr)
            prior_held.append(phe)
    new_train = [v for v in new_train if len(v)]
    prior_train = [v for v in prior_train if len(v)]
    if not new_train:
        raise ValueError("no new-condition episodes left to train on after the hold-out")
    share = cfg.prior_share if prior_train else 0.0
    n_new = sum(len(v) for v in new_train)
    n_prior = sum(len(v) for v in prior_train)
    sources = [(v, (1 - share) * len(v) / n_new) for v in new_train]
    sources += [(v, share * len(v) / n_prior) for v in prior_train]
    held_new, groups = held_batch(new_held, cfg.max_eval, cfg.seed)
    if held_new is None:
        raise ValueError("no new-condition episodes held out: need more data or a larger holdout")
    held_prior, prior_groups = held_batch(prior_held, cfg.max_eval, cfg.seed + 1)
    counts = {
        "new": [count(d) | {"path": str(p)} for d, p in zip(new_ds, new, strict=True)],
        "prior": [count(d) | {"path": str(p)} for d, p in zip(prior_ds, prior, strict=True)],
        "new_train_transitions": n_new,
        "prior_train_transitions": n_prior,
        "held_new_transitions": len(held_new),
        "held_new_successes": int((held_new.rewards > 0.5).sum()),
        "held_prior_transitions": len(held_prior) if held_prior is not None else 0,
        "batch_shares": {"prior": share, "new": 1 - share},
    }
    return Data(
        MixtureSampler(sources, cfg.batch_size, seed=cfg.seed),
        held_new,
        groups,
        held_prior,
        prior_groups,
        counts,
        new_train,
        len(new_train),
    )


def predict(
    learner: Learner, batch: Batch
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(P(success) of each logged action, its 0/1 outcome) for ``batch``."""
    logits, y = learner.logits_and_targets(batch)
    p = torch.sigmoid(logits).double().numpy()
    return p, (y.double().numpy() > 0.5).astype(np.float64)


def score_candidate(
    cfg: FinetuneConfig,
    learner: Learner,
    data: Data,
    step: int,
    arm: str,
    parent_prior: npt.NDArray[np.float64] | None = None,
    held_new: Batch | None = None,
) -> tuple[Candidate, dict[str, Any], npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
    """Score ``learner.net`` on both held-out sets; returns candidate, log entry, predictions."""
    p, y = predict(learner, data.held_new if held_new is None else held_new)
    entry: dict[str, Any] = {"step": step, "arm": arm, "new": early_stop.summary(p, y)}
    prior_score, slack, pp = 0.0, 0.0, None
    if data.held_prior is not None:
        pp, yp = predict(learner, data.held_prior)
        entry["prior"] = early_stop.summary(pp, yp)
        prior_score = early_stop.score(cfg.measure, pp, yp)
        if parent_prior is not None:
            se = early_stop.paired_se(
                cfg.measure, pp, parent_prior, yp, data.held_prior_groups, 100, cfg.seed
            )
            slack = cfg.se_margin * se
    prior_bce = float(entry["prior"]["bce"]) if "prior" in entry else 0.0
    cand = Candidate(
        step,
        early_stop.score(cfg.measure, p, y),
        prior_score,
        slack,
        prior_bce,
        float(entry["new"]["auc"]),
    )
    entry["score_new"], entry["score_prior"] = round(cand.new, 6), round(cand.prior, 6)
    entry["prior_slack"] = round(slack, 6)
    return cand, entry, p, pp
