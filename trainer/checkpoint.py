"""Training checkpoints: online + both target networks + Adam state, as safetensors + JSON.

No pickle: tensors go to safetensors, counters and config to JSON. Files are
written to a temporary name and renamed, so a crash leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from plumbing.atomic import replacing, write_text
from trainer.learner import Learner

WEIGHTS = "checkpoint.safetensors"
STATE = "checkpoint.json"


def _flatten(learner: Learner) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for prefix, net in (("net", learner.net), ("t1", learner.target1), ("t2", learner.target2)):
        for k, v in net.state_dict().items():
            out[f"{prefix}.{k}"] = v.detach().contiguous().clone()
    opt = learner.optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            out[f"opt.{pid}.{k}"] = t.detach().contiguous().clone()
    return out


def save_checkpoint(learner: Learner, root: Path, extra: dict[str, Any]) -> None:
    """Write the learner's full training state under ``root`` (atomically per file)."""
    root.mkdir(parents=True, exist_ok=True)
    with replacing(root / WEIGHTS) as tmp:
        save_file(_flatten(learner), str(tmp))
    write_text(root / STATE, json.dumps({"steps": learner.steps, **extra}, indent=2))


def load_checkpoint(learner: Learner, root: Path) -> dict[str, Any] | None:
    """Restore the learner from ``root``; returns the JSON state, or None if there is none."""
    if not (root / WEIGHTS).is_file() or not (root / STATE).is_file():
        return None
    tensors = load_file(str(root / WEIGHTS))
    for prefix, net in (("net", learner.net), ("t1", learner.target1), ("t2", learner.target2)):
        sd = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        net.load_state_dict(sd, strict=True)
    opt_sd = learner.optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt_sd["state"] = state
    learner.optimizer.load_state_dict(opt_sd)
    meta: dict[str, Any] = json.loads((root / STATE).read_text())
    learner.steps = int(meta["steps"])
    return meta
