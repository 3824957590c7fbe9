"""Fine-tuning a parent policy on a new condition (paper section IV-A) with early stopping.

The recipe: initialise from the parent bundle's weights (or at random:
``init="scratch"``, the paper's "Scratch" baseline); the same QT-Opt learner;
every batch ``prior_share`` (50%) prior data (the base dataset plus the
lineage's earlier conditions) and the rest the new condition's data; Adam at
``lr`` = 0.25 x the pre-training rate; at most ``max_steps`` gradient steps.

What the paper lacks (section VI-B), decided from data the trainer has:

- Early stopping: a share of the new condition's episodes is held out
  (stratified by outcome). Every ``eval_every`` steps the candidate is scored
  on it (``measure``, see :mod:`trainer.early_stop`) and on a held-out slice
  of the prior data (forgetting). The parent is candidate zero. The run stops
  after ``patience`` evaluations without a new best. When no candidate beats
  the parent (by more than ``max(min_gain, se_margin x bootstrap SE)``, and
  within ``prior_tolerance`` on the prior slice) the result is
  ``"no_improvement"`` and no bundle is written.
- Augmentation (``augment="auto"``): the flip/rotation augmentation assumes a
  mirror-symmetric robot, which a changed robot may not be. Two arms, with and
  without it, train ``probe_steps`` each; the one scoring better on the
  held-out new data continues (ties keep augmentation). Never decided from a
  condition's name.

Resumable: everything lives under ``out`` (``job.json``, one directory per
arm with its checkpoint and best weights, ``state.json``, ``result.json``).
Calling :func:`finetune` again with the same arguments after a kill resumes
from the last checkpoint and ends with the same result (the loop's draws are
seeded by step); after it finished, it returns the stored result. When
``stop`` is set it checkpoints and returns status ``"stopped"`` (no bundle).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file, save_file

from agent.bundle import validate_bundle
from agent.spec import DEFAULT_SPEC
from trainer import early_stop, loop
from trainer.action_shift import ShiftSearch, search_shift
from trainer.checkpoint import load_checkpoint
from trainer.dataset import Batch, EpisodeDataset, concat_batches
from trainer.early_stop import Candidate, Measure
from trainer.export import config_from_meta, load_qnet, make_bundle
from trainer.learner import Learner, LearnerConfig
from trainer.pretrain import PretrainConfig
from trainer.qnet import QNet, QNetConfig
from trainer.sampler import MixtureSampler

Status = Literal["improved", "no_improvement", "stopped"]
PARENT_STEP = -1
"""Step number of the parent (candidate zero) in the selection; step 0 is "shift only"."""
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning recipe and its early stopping (defaults: the demo's job)."""

    max_steps: int = 1_000
    """Most gradient steps of the continuing arm (probe steps included)."""
    eval_every: int = 50
    """Steps between validations (each is a candidate)."""
    patience: int = 4
    """Validations without a new best before stopping."""
    holdout: float = 0.2
    """Share of the new condition's episodes held out for validation (per outcome)."""
    prior_holdout: float = 0.1
    """Share of the prior episodes held out to measure forgetting."""
    max_eval: int = 1_024
    """Most held-out transitions scored per side (new, prior) per validation."""
    batch_size: int = 128
    """Transitions per gradient step."""
    lr: float = 0.25 * PretrainConfig.lr
    """Adam learning rate: 25% of pre-training's, as in the paper."""
    prior_share: float = 0.5
    """Share of every batch drawn from prior data (the rest: new data); 1.0 when no prior."""
    init: Literal["parent", "scratch"] = "parent"
    """Start from the parent's weights or from a random initialisation (baseline)."""
    augment: Literal["auto", "on", "off"] = "auto"
    """Flip/rotation augmentation; "auto" decides with a probe on held-out data."""
    probe_steps: int = 50
    """Steps of each arm of the augmentation probe (auto only)."""
    measure: Measure = "auc"
    """Validation measure (see trainer.early_stop)."""
    min_gain: float = 0.005
    """Smallest gain over the parent's score that counts as an improvement."""
    se_margin: float = 2.0
    """Gain must also exceed this many bootstrap standard errors."""
    prior_tolerance: float = 0.02
    """Largest allowed drop of the prior-slice score below the parent's (forgetting rule)."""
    prior_trade: float = 0.1
    """A candidate may also lose this share of its new-data gain on prior data (forgetting)."""
    prior_trade_cap: float = 0.05
    """Largest prior-score fall ``prior_trade`` allows."""
    prior_bce_ratio: float = 1.15
    """Largest allowed prior-slice BCE as a multiple of the parent's (forgetting rule)."""
    min_auc: float = 0.6
    """The winner's held-out new-data AUC must reach this (better than chance)."""
    seed: int = 0
    """Seed of the split, initialisation, sampling and augmentation."""
    threads: int = 2
    """torch CPU threads."""
    checkpoint_every: int = 50
    """Steps between checkpoints (validations are checkpointed too)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: "auto" is CUDA when torch sees a GPU."""
    shift_search: bool = True
    """Search a cell-frame action shift (a moved gripper) before training; see action_shift."""
    shift_samples: int = 400
    """New-condition training grasps scored by the shift search."""
    snapshot_steps: tuple[int, ...] = ()
    """Also export the network at these steps as bundles (sweeps; multiples of eval_every)."""
    network: QNetConfig | None = None
    """Network shape for ``init="scratch"``; None: the parent's shape."""
    gamma: float = 0.9
    """Discount of bootstrapped targets (as in pre-training; unused at horizon 1)."""

    def __post_init__(self) -> None:
        if self.eval_every <= 0 or self.max_steps <= 0 or self.patience <= 0:
            raise ValueError("max_steps, eval_every and patience must be > 0")
        if not 0.0 < self.holdout < 1.0 or not 0.0 < self.prior_holdout < 1.0:
            raise ValueError("holdout shares must be in (0, 1)")
        if not 0.0 <= self.prior_share < 1.0:
            raise ValueError("prior_share must be in [0, 1)")
        if any(s <= 0 or s % self.eval_every for s in self.snapshot_steps):
            raise ValueError("snapshot_steps must be positive multiples of eval_every")


@dataclass(frozen=True)
class FinetuneResult:
    """How a fine-tune job ended."""

    status: Status
    """"improved" (a child bundle), "no_improvement" (keep the parent) or "stopped"."""
    bundle_path: Path | None
    """The child bundle's directory (only when improved)."""
    bundle_id: str | None
    """The child bundle's id (only when improved)."""
    meta: dict[str, Any]
    """Everything the child's meta.json records (also for no_improvement), plus wall time."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (what the CLI prints)."""
        return {
            "status": self.status,
            "bundle_path": str(self.bundle_path) if self.bundle_path else None,
            "bundle_id": self.bundle_id,
            "meta": self.meta,
        }


def config_to_json(cfg: FinetuneConfig) -> dict[str, Any]:
    """The config as JSON-ready data (network included when set)."""
    d: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(cfg)))
    return d


# ----------------------------------------------------------------------------- data


def _rows(ds: EpisodeDataset) -> npt.NDArray[np.int64]:
    return ds._rows  # the view's dataset-wide rows (no public accessor in dataset.py)


def _episode_groups(ds: EpisodeDataset, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return ds._episode_keys()[rows]


def _count(ds: EpisodeDataset) -> dict[str, int]:
    succ = ds.filter(success=True)
    return {
        "transitions": len(ds),
        "episodes": len(np.unique(_episode_groups(ds, _rows(ds)))),
        "successes": len(np.unique(_episode_groups(succ, _rows(succ)))),
    }


@dataclass
class _Data:
    """Training sources and the fixed held-out batches."""

    sampler: MixtureSampler
    held_new: Batch
    held_new_groups: npt.NDArray[np.int64]
    held_prior: Batch | None
    held_prior_groups: npt.NDArray[np.int64]
    counts: dict[str, Any]
    new_train: list[EpisodeDataset]
    n_new_sources: int


def _stratified(
    ds: EpisodeDataset, share: float, seed: int
) -> tuple[list[EpisodeDataset], list[EpisodeDataset]]:
    train, held = [], []
    for ok in (True, False):
        v = ds.filter(success=ok)
        if len(v) == 0:
            continue
        tr, he = v.split_episodes(share, seed=seed)
        train.append(tr)
        held.append(he)
    return train, held


def _held_batch(
    views: list[EpisodeDataset], cap: int, seed: int
) -> tuple[Batch | None, npt.NDArray[np.int64]]:
    rng = np.random.default_rng([seed, 99])
    parts, groups = [], []
    total = sum(len(v) for v in views)
    for i, v in enumerate(views):
        if len(v) == 0:
            continue
        rows = _rows(v)
        k = min(len(rows), max(1, round(cap * len(rows) / max(total, 1))))
        pick = np.sort(rng.choice(rows, size=k, replace=False))
        parts.append(v.gather(pick))
        groups.append(_episode_groups(v, pick) + i * 10_000_000)
    if not parts:
        return None, np.zeros(0, np.int64)
    return (parts[0] if len(parts) == 1 else concat_batches(parts)), np.concatenate(groups)


def _open_data(cfg: FinetuneConfig, new: Sequence[Path], prior: Sequence[Path]) -> _Data:
    new_ds = [EpisodeDataset.open(p) for p in new]
    prior_ds = [EpisodeDataset.open(p) for p in prior]
    if not new_ds or sum(len(d) for d in new_ds) == 0:
        raise ValueError("fine-tuning needs new-condition data")
    new_train: list[EpisodeDataset] = []
    new_held: list[EpisodeDataset] = []
    for d in new_ds:
        tr, he = _stratified(d, cfg.holdout, cfg.seed)
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
    held_new, groups = _held_batch(new_held, cfg.max_eval, cfg.seed)
    if held_new is None:
        raise ValueError("no new-condition episodes held out: need more data or a larger holdout")
    held_prior, prior_groups = _held_batch(prior_held, cfg.max_eval, cfg.seed + 1)
    counts = {
        "new": [_count(d) | {"path": str(p)} for d, p in zip(new_ds, new, strict=True)],
        "prior": [_count(d) | {"path": str(p)} for d, p in zip(prior_ds, prior, strict=True)],
        "new_train_transitions": n_new,
        "prior_train_transitions": n_prior,
        "held_new_transitions": len(held_new),
        "held_new_successes": int((held_new.rewards > 0.5).sum()),
        "held_prior_transitions": len(held_prior) if held_prior is not None else 0,
        "batch_shares": {"prior": share, "new": 1 - share},
    }
    return _Data(
        MixtureSampler(sources, cfg.batch_size, seed=cfg.seed),
        held_new,
        groups,
        held_prior,
        prior_groups,
        counts,
        new_train,
        len(new_train),
    )


# ----------------------------------------------------------------------------- scoring


def _predict(
    learner: Learner, batch: Batch
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    logits, y = learner.logits_and_targets(batch)
    p = torch.sigmoid(logits).double().numpy()
    return p, (y.double().numpy() > 0.5).astype(np.float64)


def _score(
    cfg: FinetuneConfig,
    learner: Learner,
    data: _Data,
    step: int,
    arm: str,
    parent_prior: npt.NDArray[np.float64] | None = None,
    held_new: Batch | None = None,
) -> tuple[Candidate, dict[str, Any], npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
    """Score ``learner.net`` on both held-out sets; returns candidate, log entry, predictions."""
    p, y = _predict(learner, data.held_new if held_new is None else held_new)
    entry: dict[str, Any] = {"step": step, "arm": arm, "new": early_stop.summary(p, y)}
    prior_score, slack, pp = 0.0, 0.0, None
    if data.held_prior is not None:
        pp, yp = _predict(learner, data.held_prior)
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


# ----------------------------------------------------------------------------- arms


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


class _Job:
    """One fine-tune job under ``out`` (holds the data, the parent and the scoring)."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        parent_net: QNet,
        net_cfg: QNetConfig,
        data: _Data,
        out: Path,
        device: torch.device,
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> None:
        self.cfg, self.parent_net, self.net_cfg, self.data = cfg, parent_net, net_cfg, data
        self.out, self.device, self.progress, self.stop = out, device, progress, stop
        self.shift_m: tuple[float, float] = (0.0, 0.0)
        self.held_new = data.held_new
        self.parent_learner = self._learner(parent_net, augment=False)
        self.parent, self.parent_entry, self.parent_p, self.parent_pp = _score(
            cfg, self.parent_learner, data, PARENT_STEP, "parent"
        )

    def set_shift(self, shift_m: tuple[float, float]) -> None:
        """Train and validate on the new data as if commanded at command + shift.

        The network trains unshifted: new-condition batches (and the new
        held-out set) get the shift added to their logged actions, prior data
        (the stock robot) do not. The exported child carries the shift in
        ``QNetConfig.action_shift_m``, so it scores where the fingers land.
        """
        self.shift_m = shift_m
        spec = DEFAULT_SPEC
        delta = np.asarray(
            [shift_m[0] / spec.workspace_x_m, shift_m[1] / spec.workspace_y_m, 0.0], np.float32
        )

        def move(b: Batch) -> Batch:
            return dataclasses.replace(b, actions=(b.actions + delta).astype(np.float32))

        sampler = self.data.sampler
        if shift_m == (0.0, 0.0):
            sampler.transforms = [None] * len(sampler.sources)
            self.held_new = self.data.held_new
            return
        sampler.transforms = [
            move if i < self.data.n_new_sources else None for i in range(len(sampler.sources))
        ]
        self.held_new = move(self.data.held_new)

    def export_config(self) -> QNetConfig:
        """The child's network config (the shift included)."""
        return dataclasses.replace(self.net_cfg, action_shift_m=self.shift_m)

    def _learner(self, net: QNet, augment: bool) -> Learner:
        lc = LearnerConfig(
            lr=self.cfg.lr, gamma=self.cfg.gamma, augment=augment, seed=self.cfg.seed
        )
        return Learner(net, DEFAULT_SPEC, lc)

    def _fresh_net(self) -> QNet:
        if self.cfg.init == "parent":
            net = QNet(self.net_cfg, spec=DEFAULT_SPEC)
            net.load_state_dict(self.parent_net.state_dict())
        else:
            torch.manual_seed(self.cfg.seed)
            net = QNet(self.net_cfg, spec=DEFAULT_SPEC)
        return net.to(self.device)

    def arm_dir(self, augment: bool, tag: str = "") -> Path:
        return self.out / (("arm-aug" if augment else "arm-noaug") + tag)

    def run_arm(
        self, augment: bool, until: int, early: bool, phase: str, tag: str = ""
    ) -> dict[str, Any]:
        """Train one arm to ``until`` (resumable; ``tag`` names a variant's directory);
        returns its state (curve, best, ended)."""
        d = self.arm_dir(augment, tag)
        d.mkdir(parents=True, exist_ok=True)
        learner = self._learner(self._fresh_net(), augment)
        saved = load_checkpoint(learner, d / "checkpoint")
        st: dict[str, Any] = {
            "curve": [],
            "best_step": PARENT_STEP,
            "best_new": self.parent.new,
            "ended": False,
            "stopped": False,
            "snapshots": {},
        }
        if saved is not None:
            st.update({k: saved[k] for k in st if k in saved})
        st["stopped"] = False
        if st["ended"] or learner.steps >= until:
            return st
        cfg = self.cfg
        last_loss = [float("nan")]

        def emit(step: int, loss: float, val: dict[str, Any] | None) -> None:
            if self.progress is not None:
                self.progress(
                    {
                        "phase": phase,
                        "augment": augment,
                        "step": step,
                        "max_steps": until,
                        "loss": loss,
                        "val": val,
                        "best_step": st["best_step"],
                        "parent": self.parent_entry,
                        "lr": learner.optimizer.param_groups[0]["lr"],
                    }
                )

        def hook(step: int, loss: float) -> tuple[bool, bool]:
            arm = "aug" if augment else "noaug"
            cand, entry, _, _ = _score(
                cfg, learner, self.data, step, arm, self.parent_pp, self.held_new
            )
            entry["loss"] = round(loss, 6) if np.isfinite(loss) else None
            st["curve"].append(entry)
            if (
                early_stop.eligible(
                    cand, self.parent, cfg.prior_tolerance, cfg.prior_bce_ratio, _trade(cfg)
                )
                and cand.new > st["best_new"]
            ):
                tmp = d / ".best.tmp"
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in learner.net.state_dict().items()},
                    str(tmp),
                )
                os.replace(tmp, d / f"best-{step}.safetensors")
                st["best_step"], st["best_new"] = step, cand.new
            if step in cfg.snapshot_steps:
                snap_net = QNet(self.export_config(), spec=DEFAULT_SPEC)
                snap_net.load_state_dict(loop.on_cpu(cast(QNet, learner.net)).state_dict())
                snap = make_bundle(
                    snap_net.eval(),
                    {
                        "condition": "snapshot",
                        "training": {"kind": "finetune-snapshot", "step": step},
                    },
                    d / "snapshots",
                )
                st["snapshots"][str(step)] = str(snap.path)
            emit(step, loss, entry)
            go_on = True
            if early and step - int(st["best_step"]) >= cfg.patience * cfg.eval_every:
                st["ended"] = True
                go_on = False
            return go_on, True

        def report(step: int, loss: float) -> None:
            last_loss[0] = loss
            if step % cfg.eval_every:
                emit(step, loss, st["curve"][-1] if st["curve"] else None)

        lc = loop.LoopConfig(
            seed=cfg.seed * 2 + int(augment),
            checkpoint_every=cfg.checkpoint_every,
            hook_every=cfg.eval_every,
            label=f"finetune {phase} ({'aug' if augment else 'no aug'})",
            quiet=self.progress is not None,
        )
        if saved is None and self.shift_m != (0.0, 0.0):
            hook(0, float("nan"))  # candidate "shift only": the parent's weights, shifted
        res = loop.run(
            learner,
            lambda rng: self.data.sampler.sample(rng),
            until,
            d / "checkpoint",
            lc,
            hook=hook,
            state=lambda: {
                k: st[k] for k in ("curve", "best_step", "best_new", "ended", "snapshots")
            },
            report=report,
            stop=self.stop,
            recent_losses=saved.get("recent_losses") if saved else None,
        )
        st["stopped"] = res.stopped
        st["steps"] = res.steps
        return st

    def best_net(self, augment: bool, step: int, tag: str = "") -> QNet:
        net = QNet(self.net_cfg, spec=DEFAULT_SPEC)
        path = self.arm_dir(augment, tag) / f"best-{step}.safetensors"
        net.load_state_dict(load_file(str(path)))
        return net


# ----------------------------------------------------------------------------- the job


def _identity(job: dict[str, Any]) -> Any:
    """What must match to resume a job (threads and device may change between runs)."""
    j = json.loads(json.dumps(job))
    for k in ("threads", "device"):
        j["config"].pop(k, None)
    return j


def _resolve_device(cfg: FinetuneConfig) -> torch.device:
    if cfg.device == "auto":
        return loop.pick_device()
    return torch.device(cfg.device)


def finetune(
    cfg: FinetuneConfig,
    parent: Path,
    new: Path | Sequence[Path],
    prior: Sequence[Path],
    out: Path,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    job_id: str | None = None,
    condition: str = "",
) -> FinetuneResult:
    """Fine-tune ``parent`` on ``new`` (with ``prior`` replay) under ``out``; resumable.

    Returns status "improved" with the validated child bundle (under
    ``out/bundles``), "no_improvement" (no bundle: keep serving the parent),
    or "stopped" when ``stop`` was set (state checkpointed; call again to
    resume). ``progress`` gets a dict at every validation and every 25 steps:
    phase, augment, step, max_steps, loss, val (latest validation entry),
    best_step, parent (the parent's validation entry). Raises ValueError on
    unusable data or a changed job under the same ``out``; BundleError if the
    parent or the child bundle fails validation.
    """
    t0 = time.time()
    out = Path(out)
    new_paths = [Path(new)] if isinstance(new, (str, Path)) else [Path(p) for p in new]
    prior_paths = [Path(p) for p in prior]
    out.mkdir(parents=True, exist_ok=True)
    if (out / "result.json").is_file():
        return _load_result(out)
    job = {
        "config": config_to_json(cfg),
        "parent": str(parent),
        "new": [str(p) for p in new_paths],
        "prior": [str(p) for p in prior_paths],
        "job_id": job_id,
        "condition": condition,
    }
    if (out / "job.json").is_file():
        if _identity(json.loads((out / "job.json").read_text())) != _identity(job):
            raise ValueError(f"{out} holds a different fine-tune job; use a new directory")
    else:
        _write_json(out / "job.json", job)
    torch.set_num_threads(cfg.threads)
    device = _resolve_device(cfg)
    parent_bundle = validate_bundle(Path(parent))
    parent_net = load_qnet(parent_bundle)
    net_cfg = config_from_meta(parent_bundle.meta)
    if cfg.network is not None:
        if cfg.init == "parent" and cfg.network != net_cfg:
            raise ValueError("init='parent' needs the parent's network shape")
        net_cfg = cfg.network
    parent_net = parent_net.to(device)
    data = _open_data(cfg, new_paths, prior_paths)
    jb = _Job(cfg, parent_net, net_cfg, data, out, device, progress, stop)

    def stopped(phase: str, st: dict[str, Any]) -> FinetuneResult:
        meta = {"phase": phase, "steps": st.get("steps"), "wall_s": round(time.time() - t0, 1)}
        return FinetuneResult("stopped", None, None, meta)

    shift_rec = _shift(cfg, jb, data, out)
    probe: dict[str, Any] = {}
    tag = ""
    if shift_rec.get("adopted"):
        shift_rec, st = _check_shift(cfg, jb, shift_rec, out)
        if st is not None and st["stopped"]:
            return stopped("shift probe", st)
    if shift_rec.get("adopted"):
        jb.set_shift((float(shift_rec["shift_m"][0]), float(shift_rec["shift_m"][1])))
        augment, tag = False, SHIFT_TAG
        probe = {"skipped": "an action shift is a mirror asymmetry: augmentation off"}
    elif cfg.augment == "auto":
        until = min(cfg.probe_steps, cfg.max_steps)
        for aug in (True, False):
            st = jb.run_arm(aug, until, early=False, phase="probe")
            if st["stopped"]:
                return stopped("probe", st)
            scores = [e["score_new"] for e in st["curve"] if e["step"] <= until]
            probe["aug" if aug else "noaug"] = max(scores) if scores else float("-inf")
        augment = probe["aug"] >= probe["noaug"]
    else:
        augment = cfg.augment == "on"
    st = jb.run_arm(augment, cfg.max_steps, early=True, phase="train", tag=tag)
    if st["stopped"]:
        return stopped("train", st)
    result = _decide(
        cfg, jb, st, augment, probe, parent_bundle.id, job_id, condition, shift_rec, tag
    )
    _write_json(out / "result.json", result.to_json())
    return dataclasses.replace(result, meta={**result.meta, "wall_s": round(time.time() - t0, 1)})


def _decide(
    cfg: FinetuneConfig,
    jb: _Job,
    st: dict[str, Any],
    augment: bool,
    probe: dict[str, Any],
    parent_id: str,
    job_id: str | None,
    condition: str,
    shift_rec: dict[str, Any],
    tag: str = "",
) -> FinetuneResult:
    curve = st["curve"]
    cands = [
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
    best = early_stop.best_candidate(
        cands, jb.parent, cfg.prior_tolerance, cfg.prior_bce_ratio, _trade(cfg)
    )
    se = 0.0
    chosen: Candidate | None = None
    net: QNet | None = None
    if best.step != PARENT_STEP:
        net = jb.best_net(augment, best.step, tag).to(jb.device)
        p, y = _predict(jb._learner(net, False), jb.held_new)
        se = early_stop.paired_se(
            cfg.measure, p, jb.parent_p, y, jb.data.held_new_groups, seed=cfg.seed
        )
        chosen = early_stop.choose(
            cands,
            jb.parent,
            cfg.prior_tolerance,
            cfg.min_gain,
            se,
            cfg.se_margin,
            cfg.prior_bce_ratio,
            cfg.min_auc,
            _trade(cfg),
        )
    steps_run = max((e["step"] for e in curve), default=0)
    meta: dict[str, Any] = {
        "condition": condition,
        "job_id": job_id,
        "training": {
            "kind": "finetune",
            "recipe": "paper IV-A (parent init, 50/50 prior/new, 0.25x lr) + early stopping",
            "init": cfg.init,
            "config": config_to_json(cfg),
            "augment": augment,
            "augment_probe": probe,
            "action_shift": shift_rec,
            "steps_run": steps_run,
            "chosen_step": chosen.step if chosen else None,
            "stopped_early": bool(st["ended"]),
        },
        "snapshots": st.get("snapshots", {}),
        "data": jb.data.counts,
        "validation": {
            "measure": cfg.measure,
            "parent": jb.parent_entry,
            "chosen": next((e for e in curve if chosen and e["step"] == chosen.step), None),
            "best_step": best.step,
            "gain": round(best.new - jb.parent.new, 6),
            "se": round(se, 6),
            "curve": curve,
            "rule": (
                "best held-out new-data score among candidates whose prior-slice score fell "
                f"at most max({cfg.prior_tolerance}, {cfg.se_margin} x its bootstrap SE, "
                f"min({cfg.prior_trade_cap}, {cfg.prior_trade} x its new-score gain)) and "
                f"whose prior-slice BCE is at most {cfg.prior_bce_ratio} x the parent's; wins "
                f"if gain > max({cfg.min_gain}, {cfg.se_margin} x SE) and its AUC >= "
                f"{cfg.min_auc}"
            ),
        },
    }
    if chosen is None or net is None:
        return FinetuneResult("no_improvement", None, None, {**meta, "parent_id": parent_id})
    child = QNet(jb.export_config(), spec=DEFAULT_SPEC)
    child.load_state_dict(loop.on_cpu(net).state_dict())
    bundle = make_bundle(child.eval(), meta, jb.out / "bundles", parent_id=parent_id)
    return FinetuneResult("improved", bundle.path, bundle.id, dict(bundle.meta))


SHIFT_TAG = "-shift"
"""Directory suffix of the shifted arm (the unshifted probe keeps the plain name)."""


def _trade(cfg: FinetuneConfig) -> early_stop.Trade:
    return early_stop.Trade(cfg.prior_trade, cfg.prior_trade_cap)


def keep_shift(
    shifted: list[dict[str, Any]], plain: list[dict[str, Any]], until: int
) -> tuple[bool, float, float]:
    """(keep, best shifted score, best unshifted score) over the two probe curves' entries up
    to step ``until``: the shift stays when its arm scores at least as well (ties: shift)."""

    def best(curve: list[dict[str, Any]]) -> float:
        scores = [float(e["score_new"]) for e in curve if e["step"] <= until]
        return max(scores) if scores else float("-inf")

    a, b = best(shifted), best(plain)
    return a >= b, a, b


def _check_shift(
    cfg: FinetuneConfig, jb: _Job, rec: dict[str, Any], out: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Does the adopted shift beat plain fine-tuning? Both arms train ``probe_steps``
    (no augmentation): the shifted arm (its step 0 is "shift only") and the unshifted one;
    the shift stays only when the shifted arm's best held-out score is at least the
    unshifted arm's. A parent confused by a new scene can have its held-out AUC restored
    by a shift that moves no finger (seen twice on the checkerboard in the demo: the shifted
    child served no better and probation rolled it back), while a few plain steps learn the
    scene (held-out AUC 0.89-0.94 at 50 steps against 0.75-0.84 shifted); a moved gripper
    is what plain fine-tuning cannot learn (offset gripper: AUC 0.30 -> 0.55 in 1,000
    steps) and the shift wins there. Stored in ``shift.json``; returns the updated record
    and the last probe state (None when the record already held the verdict)."""
    if "probe" in rec:
        return rec, None
    until = min(cfg.probe_steps, cfg.max_steps)
    plain = jb.run_arm(False, until, early=False, phase="shift probe")
    if plain["stopped"]:
        return rec, plain
    jb.set_shift((float(rec["shift_m"][0]), float(rec["shift_m"][1])))
    moved = jb.run_arm(False, until, early=False, phase="shift probe", tag=SHIFT_TAG)
    jb.set_shift((0.0, 0.0))
    if moved["stopped"]:
        return rec, moved

    keep, shifted, unshifted = keep_shift(moved["curve"], plain["curve"], until)
    rec = {
        **rec,
        "adopted": keep,
        "shift_m": rec["shift_m"] if keep else [0.0, 0.0],
        "probe": {"steps": until, "shifted": shifted, "unshifted": unshifted},
    }
    _write_json(out / "shift.json", rec)
    return rec, moved


def _shift(cfg: FinetuneConfig, jb: _Job, data: _Data, out: Path) -> dict[str, Any]:
    """The action-shift search (stored in ``out/shift.json``; skipped without prior data)."""
    f = out / "shift.json"
    if f.is_file():
        rec: dict[str, Any] = json.loads(f.read_text())
        return rec
    if not cfg.shift_search or cfg.init != "parent" or data.held_prior is None:
        rec = {"adopted": False, "skipped": True}
    else:
        rng = np.random.default_rng([cfg.seed, 7])
        views = data.new_train
        rows_per = [_rows(v) for v in views]
        total = sum(len(r) for r in rows_per)
        parts = []
        for v, rows in zip(views, rows_per, strict=True):
            k = min(len(rows), max(1, round(cfg.shift_samples * len(rows) / total)))
            parts.append(v.gather(np.sort(rng.choice(rows, size=k, replace=False))))
        batch = parts[0] if len(parts) == 1 else concat_batches(parts)
        _, rec = search_shift(
            jb.parent_net, batch, cfg.measure, ShiftSearch(), jb.parent.prior, held=data.held_new
        )
    _write_json(f, rec)
    return rec


def _load_result(out: Path) -> FinetuneResult:
    raw = json.loads((out / "result.json").read_text())
    path = Path(raw["bundle_path"]) if raw["bundle_path"] else None
    return FinetuneResult(raw["status"], path, raw["bundle_id"], raw["meta"])
