"""A fine-tune job's training arms: the parent scored once, each arm trained, validated,
checkpointed and its best weights kept (resumable per arm directory under ``out``)."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from agent.spec import DEFAULT_SPEC
from trainer import loop
from trainer.checkpoint import load_checkpoint
from trainer.dataset import Batch
from trainer.export import make_bundle
from trainer.finetune import selection
from trainer.finetune.config import FinetuneConfig, Progress
from trainer.finetune.data import Data, score_candidate
from trainer.finetune.selection import PARENT_STEP
from trainer.learner import Learner, LearnerConfig
from trainer.qnet import QNet, QNetConfig


class Arms:
    """One fine-tune job under ``out`` (holds the data, the parent and the scoring)."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        parent_net: QNet,
        net_cfg: QNetConfig,
        data: Data,
        out: Path,
        device: torch.device,
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> None:
        self.cfg, self.parent_net, self.net_cfg, self.data = cfg, parent_net, net_cfg, data
        self.out, self.device, self.progress, self.stop = out, device, progress, stop
        self.shift_m: tuple[float, float] = (0.0, 0.0)
        self.held_new = data.held_new
        self.parent_learner = self.learner(parent_net, augment=False)
        self.parent, self.parent_entry, self.parent_p, self.parent_pp = score_candidate(
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

    def learner(self, net: QNet, augment: bool) -> Learner:
        """A learner on ``net`` with the recipe's rate, discount and seed."""
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
        """One arm's directory (``tag``: a variant's suffix, e.g. ``config.SHIFT_TAG``)."""
        return self.out / (("arm-aug" if augment else "arm-noaug") + tag)

    def run_arm(
        self, augment: bool, until: int, early: bool, phase: str, tag: str = ""
    ) -> dict[str, Any]:
        """Train one arm to ``until`` (resumable; ``tag`` names a variant's directory);
        returns its state (curve, best, ended)."""
        d = self.arm_dir(augment, tag)
        d.mkdir(parents=True, exist_ok=True)
        learner = self.learner(self._fresh_net(), augment)
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
            cand, entry, _, _ = score_candidate(
                cfg, learner, self.data, step, arm, self.parent_pp, self.held_new
            )
            entry["loss"] = round(loss, 6) if np.isfinite(loss) else None
            st["curve"].append(entry)
            if selection.keeps(cfg, cand, self.parent, int(st["best_step"]), st["best_new"]):
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
        """The weights an arm kept as its best at ``step`` (on the CPU)."""
        net = QNet(self.net_cfg, spec=DEFAULT_SPEC)
        path = self.arm_dir(augment, tag) / f"best-{step}.safetensors"
        net.load_state_dict(load_file(str(path)))
        return net
