"""The one training loop (pre-training and fine-tuning): steps, progress, checkpoints, resume.

Determinism: the batch of step ``s`` is drawn from a generator seeded by
``(seed, s)`` and the learner's augmentation/CEM draws are reseeded the same
way, so a run resumed from a checkpoint at any step takes exactly the steps
an uninterrupted run takes (on the same device and thread count).

The loop checkpoints every ``checkpoint_every`` steps, at the end, and when
``stop`` is set (then it returns early with ``stopped=True``). A ``hook``
called every ``hook_every`` steps may end the run early (early stopping) and
may ask for a checkpoint; its state travels in the checkpoint's JSON through
``state()``.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.checkpoint import save_checkpoint
from trainer.dataset import Batch
from trainer.learner import Learner, StepStats
from trainer.qnet import QNet


@dataclass(frozen=True)
class LoopConfig:
    """How the loop runs (not what it learns)."""

    seed: int = 0
    """Seed of batch sampling and augmentation, combined with the step number."""
    checkpoint_every: int = 250
    """Steps between checkpoints (also at the end and on stop)."""
    hook_every: int = 0
    """Steps between calls of the hook (0: never)."""
    report_every: int = 25
    """Steps between progress lines on stderr / progress callbacks."""
    label: str = "train"
    """Name shown in progress lines."""
    quiet: bool = False
    """No progress lines on stderr."""


@dataclass(frozen=True)
class LoopResult:
    """How a call of :func:`run` ended."""

    steps: int
    """Learner steps when the loop returned."""
    stopped: bool
    """True when ``stop`` was set (a checkpoint was written first)."""
    ended_early: bool
    """True when the hook asked to end the run."""
    last_loss: float
    """Mean training loss over the last ``report_every`` steps (nan if none ran)."""


def reseed(learner: Learner, seed: int, step: int) -> np.random.Generator:
    """Reseed the learner's draws for ``step``; returns the batch generator of that step."""
    learner.rng = np.random.default_rng([seed, step, 1])
    learner.generator.manual_seed(int(np.random.default_rng([seed, step, 2]).integers(2**62)))
    return np.random.default_rng([seed, step, 0])


def run(
    learner: Learner,
    sample: Callable[[np.random.Generator], Batch],
    until: int,
    ckpt: Path,
    cfg: LoopConfig,
    hook: Callable[[int, float], tuple[bool, bool]] | None = None,
    state: Callable[[], dict[str, Any]] | None = None,
    report: Callable[[int, float], None] | None = None,
    stop: threading.Event | None = None,
    recent_losses: list[float] | None = None,
) -> LoopResult:
    """Train until ``learner.steps == until`` (or the hook ends it, or ``stop`` is set).

    ``sample(rng)`` returns a batch; ``hook(step, loss) -> (go_on, checkpoint_now)``;
    ``state()`` is stored in every checkpoint's JSON; ``report(step, loss)``
    is called every ``report_every`` steps. Checkpoints also store the last
    ``report_every`` losses (``recent_losses``); pass them back on resume so the
    reported mean loss is the one an uninterrupted run reports.
    """
    t0 = time.time()
    start = learner.steps
    losses: list[float] = list(recent_losses or [])

    def mean_loss() -> float:
        return float(np.mean(losses[-cfg.report_every :])) if losses else float("nan")

    def save() -> None:
        extra = {"label": cfg.label, "recent_losses": losses[-cfg.report_every :]}
        save_checkpoint(learner, ckpt, {**extra, **(state() if state else {})})

    while learner.steps < until:
        if stop is not None and stop.is_set():
            save()
            return LoopResult(learner.steps, True, False, mean_loss())
        rng = reseed(learner, cfg.seed, learner.steps)
        st: StepStats = learner.step(sample(rng))
        losses.append(st.loss)
        s = learner.steps
        if s % cfg.report_every == 0 or s == until:
            if report is not None:
                report(s, mean_loss())
            if not cfg.quiet:
                rate = (s - start) / max(time.time() - t0, 1e-9)
                eta = (until - s) / max(rate, 1e-9)
                print(
                    f"\r{cfg.label}: step {s}/{until}  loss {mean_loss():.4f}"
                    f"  {rate:4.1f} steps/s  eta {eta / 60:4.1f} min",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        go_on, ck = True, False
        if hook is not None and cfg.hook_every > 0 and s % cfg.hook_every == 0:
            go_on, ck = hook(s, mean_loss())
        if ck or not go_on or s % cfg.checkpoint_every == 0 or s == until:
            save()
        if not go_on:
            if not cfg.quiet:
                print(file=sys.stderr)
            return LoopResult(s, False, True, mean_loss())
    if not cfg.quiet and learner.steps > start:  # end the \r progress line
        print(file=sys.stderr)
    return LoopResult(learner.steps, False, False, mean_loss())


def on_cpu(net: QNet) -> QNet:
    """``net`` itself when on the CPU, else a CPU copy (export and ONNX need CPU tensors)."""
    if next(net.parameters()).device.type == "cpu":
        return net
    return copy.deepcopy(net).cpu()


def pick_device() -> torch.device:
    """CUDA when torch sees a GPU, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
