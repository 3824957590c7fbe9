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
  after ``patience`` evaluations without a new best. The gate (``gate``, see
  :mod:`trainer.finetune.selection`): "race" (default) ships the best candidate
  that passes the forgetting rule unless it is clearly worse than the parent
  (the agent's race on the robot decides); "strict" ships only one that beats
  the parent by more than ``max(min_gain, se_margin x bootstrap SE)``. Otherwise
  the result is ``"no_improvement"`` and no bundle is written.
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

Modules: :mod:`.config` (the recipe, the result, the job directory's JSON),
:mod:`.data` (the mixture, the held-out sets, scoring), :mod:`.selection`
(pure: which candidate ships, the forgetting rule, the shift guard),
:mod:`.arms` (training one arm) and :mod:`.run` (the job, :func:`finetune`).
"""

from trainer.finetune.config import (
    FinetuneConfig,
    FinetuneResult,
    Progress,
    Status,
    config_to_json,
)
from trainer.finetune.run import finetune

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "Progress",
    "Status",
    "config_to_json",
    "finetune",
]
