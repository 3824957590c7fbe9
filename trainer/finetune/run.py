"""The fine-tune job: resume or start, the action-shift search and its guard, the
augmentation probe, the training arm, and the child bundle (see :mod:`trainer.finetune`)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.bundle import validate_bundle
from agent.spec import DEFAULT_SPEC
from trainer import early_stop, loop
from trainer.action_shift import ShiftSearch, search_shift
from trainer.dataset import concat_batches
from trainer.early_stop import Candidate
from trainer.export import config_from_meta, load_qnet, make_bundle
from trainer.finetune import selection
from trainer.finetune.arms import Arms
from trainer.finetune.config import (
    SHIFT_TAG,
    FinetuneConfig,
    FinetuneResult,
    Progress,
    config_to_json,
    load_result,
    write_json,
)
from trainer.finetune.data import Data, open_data, predict, view_rows
from trainer.finetune.selection import PARENT_STEP
from trainer.qnet import QNet


def _identity(job: dict[str, Any]) -> Any:
    """What must match to resume a job (threads and device may change between runs)."""
    j = json.loads(json.dumps(job))
    for k in ("threads", "device"):
        j["config"].pop(k, None)
    # A job stored before the gate existed ran the strict gate: it resumes under "strict".
    j["config"].setdefault("gate", "strict")
    j["config"].setdefault("race_min_auc", FinetuneConfig.race_min_auc)
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
        return load_result(out)
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
        write_json(out / "job.json", job)
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
    data = open_data(cfg, new_paths, prior_paths)
    jb = Arms(cfg, parent_net, net_cfg, data, out, device, progress, stop)

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
            probe["aug" if aug else "noaug"] = selection.best_score(st["curve"], until)
        augment = selection.keep_augment(probe["aug"], probe["noaug"])
    else:
        augment = cfg.augment == "on"
    st = jb.run_arm(augment, cfg.max_steps, early=True, phase="train", tag=tag)
    if st["stopped"]:
        return stopped("train", st)
    result = _decide(
        cfg, jb, st, augment, probe, parent_bundle.id, job_id, condition, shift_rec, tag
    )
    write_json(out / "result.json", result.to_json())
    return dataclasses.replace(result, meta={**result.meta, "wall_s": round(time.time() - t0, 1)})


def _decide(
    cfg: FinetuneConfig,
    jb: Arms,
    st: dict[str, Any],
    augment: bool,
    probe: dict[str, Any],
    parent_id: str,
    job_id: str | None,
    condition: str,
    shift_rec: dict[str, Any],
    tag: str = "",
) -> FinetuneResult:
    """The result of a trained arm: the child bundle when :mod:`.selection` ships one
    (under ``out/bundles``), else "no_improvement"; the meta records the decision."""
    curve = st["curve"]
    best = selection.pick(cfg, curve, jb.parent)
    se = 0.0
    chosen: Candidate | None = None
    net: QNet | None = None
    if best.step != PARENT_STEP:
        net = jb.best_net(augment, best.step, tag).to(jb.device)
        p, y = predict(jb.learner(net, False), jb.held_new)
        se = early_stop.paired_se(
            cfg.measure, p, jb.parent_p, y, jb.data.held_new_groups, seed=cfg.seed
        )
        chosen = selection.ship(cfg, curve, jb.parent, se)
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
            "rule": selection.rule_text(cfg),
            "gate": cfg.gate,
            "candidates": selection.considered(cfg, curve, jb.parent, best, se),
            "verdict": selection.verdict(cfg, best, chosen, jb.parent, se),
        },
    }
    if chosen is None or net is None:
        return FinetuneResult("no_improvement", None, None, {**meta, "parent_id": parent_id})
    child = QNet(jb.export_config(), spec=DEFAULT_SPEC)
    child.load_state_dict(loop.on_cpu(net).state_dict())
    bundle = make_bundle(child.eval(), meta, jb.out / "bundles", parent_id=parent_id)
    return FinetuneResult("improved", bundle.path, bundle.id, dict(bundle.meta))


def _check_shift(
    cfg: FinetuneConfig, jb: Arms, rec: dict[str, Any], out: Path
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

    keep, shifted, unshifted = selection.keep_shift(moved["curve"], plain["curve"], until)
    rec = {
        **rec,
        "adopted": keep,
        "shift_m": rec["shift_m"] if keep else [0.0, 0.0],
        "probe": {"steps": until, "shifted": shifted, "unshifted": unshifted},
    }
    write_json(out / "shift.json", rec)
    return rec, moved


def _shift(cfg: FinetuneConfig, jb: Arms, data: Data, out: Path) -> dict[str, Any]:
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
        rows_per = [view_rows(v) for v in views]
        total = sum(len(r) for r in rows_per)
        parts = []
        for v, rows in zip(views, rows_per, strict=True):
            k = min(len(rows), max(1, round(cfg.shift_samples * len(rows) / total)))
            parts.append(v.gather(np.sort(rng.choice(rows, size=k, replace=False))))
        batch = parts[0] if len(parts) == 1 else concat_batches(parts)
        _, rec = search_shift(
            jb.parent_net, batch, cfg.measure, ShiftSearch(), jb.parent.prior, held=data.held_new
        )
    write_json(f, rec)
    return rec
