"""Episode datasets collected in the sim cell with a policy bundle (base replay data, bench data).

``collect_dataset`` runs the bundle through ONNX Runtime + CEM (the daemon's
serving path, :mod:`trainer.collect`) with a share of exploratory prior
actions, and ingests the grasps into the trainer's episode store. Resumable:
collection continues from its shards (kept in ``<out>-shards`` until the
dataset is complete); a complete dataset is left as it is.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle import validate_bundle
from trainer.collect import CollectConfig, collect
from trainer.dataset import INDEX_FILE, EpisodeDataset
from trainer.pretrain import ingest_shards

DEFAULT_BASE_GRASPS = 4_000
"""The demo's base replay size (2,000 collected in 29 s on the 2-core box; 4,000 in ~1 min)."""


@dataclass(frozen=True)
class DatasetSpec:
    """What to collect."""

    bundle: Path
    """Policy bundle that picks the grasps."""
    grasps: int = DEFAULT_BASE_GRASPS
    """Grasps to collect."""
    condition: str = "baseline"
    """Sim condition (at its default severity)."""
    split: str = "train"
    """Object split ("train" objects for data, "test" for evaluation)."""
    epsilon: float = 0.2
    """Share of exploratory actions (half uniform random, half scripted with noise)."""
    seed: int = 7
    """Collection seed."""
    workers: int = 2
    """Collection processes."""


def _complete(out: Path, grasps: int) -> bool:
    if not (out / INDEX_FILE).is_file():
        return False
    return EpisodeDataset.open(out).num_episodes == grasps


def collect_dataset(spec: DatasetSpec, out: Path, progress: bool = True) -> dict[str, Any]:
    """Collect ``spec.grasps`` grasps into the episode store ``out``; returns its counts."""
    bundle = validate_bundle(spec.bundle)
    if not _complete(out, spec.grasps):
        shards = out.with_name(out.name + "-shards")
        collect(
            CollectConfig(
                grasps=spec.grasps,
                workers=spec.workers,
                seed=spec.seed,
                condition=spec.condition,
                split=spec.split,
                policy_bundle=str(bundle.path),
                epsilon=spec.epsilon,
            ),
            shards,
            progress=progress,
        )
        if out.exists():
            shutil.rmtree(out)
        ingest_shards(shards, out, bundle.id, condition=spec.condition)
        shutil.rmtree(shards)
    ds = EpisodeDataset.open(out)
    counts = {
        "path": str(out),
        "episodes": ds.num_episodes,
        "successes": len(ds.filter(success=True)),  # horizon 1: one transition per grasp
        "condition": spec.condition,
        "policy_id": bundle.id,
        "epsilon": spec.epsilon,
        "seed": spec.seed,
    }
    (out / "collect.json").write_text(json.dumps(counts, indent=2))
    return counts
