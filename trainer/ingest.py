"""Convert the agent's dataset export (``robot-agent-dataset`` v1) into the trainer's episode store.

The agent writes one condition's grasps (``agent.export.export_condition``);
this groups the rows by grasp id into :class:`trainer.dataset.Episode` records
(steps in order, success, condition, policy id, start time, and the rest of the
grasp record in ``extra``) and appends them to an episode dataset. Lossless:
every image, action, reward and done flag, and every per-grasp field, lands in
the store. Reads ``.npy`` with ``allow_pickle=False`` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from agent.export import load_dataset
from agent.spec import DEFAULT_SPEC, Spec
from trainer.dataset import Episode, EpisodeWriter, Step


def import_agent_export(export_dir: Path, dataset: Path, spec: Spec = DEFAULT_SPEC) -> int:
    """Append every grasp of an agent export to the episode store at ``dataset``; returns count."""
    index, arrays = load_dataset(Path(export_dir))
    if Spec.from_dict(index["spec"]) != spec:
        raise ValueError(f"{export_dir}: spec differs from the trainer's")
    records: dict[int, dict[str, Any]] = {}
    grasps_file = Path(export_dir) / "grasps.json"
    if grasps_file.is_file():
        records = {int(r["grasp_id"]): r for r in json.loads(grasps_file.read_text())}
    gids = arrays["grasp_ids"]
    order = np.lexsort((arrays["steps"], gids))
    count = 0
    with EpisodeWriter(Path(dataset), spec) as w:
        for gid in np.unique(gids):
            rows = order[gids[order] == gid]
            steps = tuple(
                Step(
                    image=arrays["images"][r],
                    action=arrays["actions"][r].astype(np.float32),
                    reward=float(arrays["rewards"][r]),
                    done=bool(arrays["dones"][r]),
                )
                for r in rows
            )
            rec = records.get(int(gid), {})
            extra = {k: v for k, v in rec.items() if k not in ("policy_id", "success")}
            extra.setdefault("grasp_id", int(gid))
            w.append(
                Episode(
                    steps=steps,
                    success=bool(arrays["successes"][rows[-1]]),
                    condition=str(index["condition"]),
                    policy_id=str(rec.get("policy_id", ",".join(index.get("policies", [])))),
                    timestamp=float(rec.get("t_start") or index.get("created_at", 0.0)),
                    extra=extra,
                )
            )
            count += 1
    return count
