"""Base replay data as one compressed file, shipped beside the base policy.

Collecting the demo's 4,000 base replay grasps takes 1-5 minutes on two cores; the same
grasps compressed (``numpy.savez_compressed``: the sim's images compress about 12:1) are a
few MB and become an episode dataset in seconds. The file holds ``image`` (uint8,
N x H x W x 3), ``action`` (float32, N x A), ``success`` (uint8, N) and ``meta`` (a JSON
string: the collecting policy's id, the condition, the collection settings). It is read
with ``allow_pickle=False``: no pickle on disk.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from plumbing.atomic import replacing
from trainer.dataset import EpisodeDataset

FORMAT = 1
"""Version of the archive layout (``meta["format"]``)."""


def write_archive(dataset: Path, archive: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the one-step episodes of ``dataset`` into ``archive``; returns the meta written
    (``meta`` plus format, grasps and successes)."""
    images, actions, success = [], [], []
    for ep in EpisodeDataset.open(dataset).episodes():
        if len(ep.steps) != 1:
            raise ValueError(f"{dataset}: an archive holds one-step grasps only")
        images.append(ep.steps[0].image)
        actions.append(ep.steps[0].action)
        success.append(ep.success)
    full = {**meta, "format": FORMAT, "grasps": len(success), "successes": int(sum(success))}
    archive.parent.mkdir(parents=True, exist_ok=True)
    with replacing(archive) as tmp:  # the temporary name keeps .npz: numpy adds none
        np.savez_compressed(
            tmp,
            image=np.stack(images).astype(np.uint8),
            action=np.stack(actions).astype(np.float32),
            success=np.asarray(success, np.uint8),
            meta=np.array(json.dumps(full, sort_keys=True)),
        )
    return full


def read_meta(archive: Path) -> dict[str, Any]:
    """The archive's meta (reads only that member); raises ValueError when it is not one."""
    try:
        with np.load(archive, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{archive}: not a base replay archive ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{archive}: unknown archive format {meta!r:.80}")
    return meta


def dataset_from_archive(archive: Path, out: Path) -> dict[str, Any]:
    """Make the episode dataset ``out`` from ``archive`` (replacing what is there); returns
    the counts ``robot-trainer base-data`` writes to ``collect.json``."""
    from trainer.pretrain import ingest_arrays  # torch: only when a dataset is made

    meta = read_meta(archive)
    with np.load(archive, allow_pickle=False) as z:
        images, actions, success = z["image"], z["action"], z["success"]
    print(f"writing {len(success)} grasps as an episode dataset", file=sys.stderr, flush=True)
    if out.exists():
        shutil.rmtree(out)
    condition = str(meta.get("condition", "baseline"))
    ingest_arrays(images, actions, success, out, str(meta["policy_id"]), condition, archive.name)
    return {
        "path": str(out),
        "episodes": len(success),
        "successes": int(success.sum()),
        "condition": condition,
        "policy_id": meta["policy_id"],
        "epsilon": meta.get("epsilon"),
        "seed": meta.get("seed"),
        "archive": str(archive),
    }
