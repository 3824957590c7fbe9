"""Export one condition's grasps from the grasp log to an on-disk dataset for the trainer.

Format ``robot-agent-dataset`` version 1 (documented in docs/agent.md): a
directory holding ``index.json`` and one ``.npy`` file per array, written with
``allow_pickle=False`` and one row per transition:

- ``images.npy``   uint8 [T, H, W, 3]  RGB image the decision saw
- ``actions.npy``  float32 [T, A]      normalised action taken
- ``rewards.npy``  float32 [T]
- ``dones.npy``    bool [T]            last step of its grasp
- ``grasp_ids.npy`` int64 [T]          grasp id in the log (groups steps of one attempt)
- ``steps.npy``    int32 [T]           step within the attempt
- ``successes.npy`` bool [T]           outcome of the attempt the step belongs to

The next state of a step is the next row with the same grasp id; a ``done``
row has none. ``grasps.json`` holds one record per grasp (id, policy_id,
t_start, t_end, mode, success, reward, q, sensed_by), so the trainer's episode
store gets every field the log has (``trainer.ingest``). The directory
appears atomically (written aside, then renamed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.logreader import LogQueries
from agent.logrecords import decode_image
from agent.spec import Spec
from plumbing.atomic import replacing_dir

DATASET_FORMAT = "robot-agent-dataset"
DATASET_VERSION = 1


def export_condition(
    log: LogQueries,
    condition: str,
    dest: Path,
    spec: Spec,
    modes: tuple[str, ...] = ("serve", "explore"),
    after: int = 0,
) -> dict[str, Any]:
    """Write the dataset of ``condition`` (its grasps after row ``after``: a round sends only
    what the trainer does not hold) to ``dest`` (must not exist); returns its index, whose
    ``until`` is the last grasp row in it (``after`` when it is empty).

    ``log`` is the writer or a :class:`agent.grasplog.LogReader` (the daemon's
    exporter thread uses its own read-only connection)."""
    cond = log.condition(condition)
    if cond is None:
        raise KeyError(f"unknown condition {condition!r}")
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    rows = log.export_rows(int(cond["id"]), modes, after)
    n = len(rows)
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "images": np.zeros((n, *spec.image_shape), np.uint8),
        "actions": np.zeros((n, spec.action_dim), np.float32),
        "rewards": np.zeros(n, np.float32),
        "dones": np.zeros(n, np.bool_),
        "grasp_ids": np.zeros(n, np.int64),
        "steps": np.zeros(n, np.int32),
        "successes": np.zeros(n, np.bool_),
    }
    policies: set[str] = set()
    grasps: dict[int, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        gid, step, img, action, reward, done, success, pid = row[:8]
        t_start, t_end, mode, g_reward, q, sensed_by = row[8:]
        grasps.setdefault(
            int(gid),
            {
                "grasp_id": int(gid),
                "policy_id": str(pid),
                "t_start": t_start,
                "t_end": t_end,
                "mode": mode,
                "success": bool(success),
                "reward": g_reward,
                "q": q,
                "sensed_by": sensed_by,
            },
        )
        arrays["images"][i] = decode_image(img)
        arrays["actions"][i] = json.loads(action)
        arrays["rewards"][i] = reward
        arrays["dones"][i] = bool(done)
        arrays["grasp_ids"][i] = gid
        arrays["steps"][i] = step
        arrays["successes"][i] = bool(success)
        policies.add(str(pid))
    index: dict[str, Any] = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "condition": condition,
        "condition_note": cond.get("note") or "",
        "created_at": time.time(),
        "spec": spec.to_dict(),
        "transitions": n,
        "grasps": len(np.unique(arrays["grasp_ids"])),
        "after": after,
        "until": int(arrays["grasp_ids"].max()) if n else after,
        "successes": int(arrays["successes"][arrays["dones"]].sum()) if n else 0,
        "policies": sorted(policies),
        "arrays": {
            k: {"file": f"{k}.npy", "dtype": v.dtype.name, "shape": list(v.shape)}
            for k, v in arrays.items()
        },
    }
    with replacing_dir(dest) as tmp:
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v, allow_pickle=False)
        (tmp / "grasps.json").write_text(json.dumps(list(grasps.values())))
        (tmp / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    return index


def load_dataset(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """Read an exported dataset back (index, arrays); checks format, dtypes and shapes."""
    path = Path(path)
    index = json.loads((path / "index.json").read_text())
    if index.get("format") != DATASET_FORMAT or index.get("version") != DATASET_VERSION:
        raise ValueError(f"{path}: not a {DATASET_FORMAT} v{DATASET_VERSION} dataset")
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for name, desc in index["arrays"].items():
        a = np.load(path / desc["file"], allow_pickle=False)
        if a.dtype.name != desc["dtype"] or list(a.shape) != desc["shape"]:
            raise ValueError(f"{path}: {name} does not match its index entry")
        arrays[name] = a
    return index, arrays
