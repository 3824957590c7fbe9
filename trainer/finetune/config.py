"""The fine-tuning recipe's config, its result and the job directory's JSON files."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trainer.early_stop import Measure
from trainer.pretrain import PretrainConfig
from trainer.qnet import QNetConfig

Status = Literal["improved", "no_improvement", "stopped"]
Progress = Callable[[dict[str, Any]], None]

GATES = ("race", "strict")
"""Values of :attr:`FinetuneConfig.gate`."""

SHIFT_TAG = "-shift"
"""Directory suffix of the shifted arm (the unshifted probe keeps the plain name)."""


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
    """The winner's held-out new-data AUC must reach this (better than chance; strict gate)."""
    gate: Literal["race", "strict"] = "race"
    """What ships. "race": the offline gate is a filter: the eligible candidate with the best
    held-out new-data score ships unless it is clearly worse than the parent (score below
    the parent's by more than ``se_margin`` x SE, or AUC below ``race_min_auc``), and the
    robot's race against the parent decides; what "strict" ships ships too. "strict": a child
    ships only when it beats the parent by ``max(min_gain, se_margin x SE)`` with AUC >=
    ``min_auc``."""
    race_min_auc: float = 0.55
    """Race gate: a candidate whose held-out new-data AUC is below this is clearly worse."""
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
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, not {self.gate!r}")
        if not 0.0 <= self.race_min_auc <= 1.0:
            raise ValueError("race_min_auc must be in [0, 1]")
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


def write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically (a reader sees the old or the new)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_result(out: Path) -> FinetuneResult:
    """The result a finished job stored in ``out/result.json``."""
    raw = json.loads((out / "result.json").read_text())
    path = Path(raw["bundle_path"]) if raw["bundle_path"] else None
    return FinetuneResult(raw["status"], path, raw["bundle_id"], raw["meta"])
