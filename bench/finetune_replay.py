"""Replay stored fine-tune validation curves under candidate step-selection rules.

Usage: python -m bench.finetune_replay DIR [DIR ...]

Reads the ``result.json`` of every fine-tune job that ``bench/finetune.py``
left under the bench directories (``<challenge>/ft-<N>``, ``sweep-<N>``) and
re-decides each job from its stored validation curve (held-out AUC, BCE and
the prior-slice figures of every candidate) under four rules:

- ``auc``: the strict gate's rule (``gate = "strict"``; best held-out AUC among
  candidates that pass the forgetting rule; wins by ``max(min_gain, se_margin x SE)``
  and AUC >= min_auc).
- ``hybrid`` ("BCE for when, AUC for whether"): among the candidates that pass
  the forgetting rule and whose AUC beats the parent's by the same gate, the
  lowest held-out BCE; "no improvement" when none qualifies.
- ``bce``: lowest held-out BCE among eligible candidates, gated on BCE (for
  reference: it ships on any data, every candidate recalibrates).
- ``both``: like ``hybrid`` but the step is the highest mean of the held-out
  AUC on new and on prior data (ranks well on both conditions).

Each rule also gets its own patience (``patience`` validations without a new
best end the run), so a rule cannot pick a step the job would not have reached.
The per-candidate bootstrap SE is not stored; the job's SE (that of its
AUC-best candidate) stands for every candidate. Served success at the picked
step is looked up where the bench measured it (sweep snapshots at fixed steps,
the early-stopped child). The last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from trainer import early_stop
from trainer.early_stop import Candidate
from trainer.finetune import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
RULES = ("auc", "hybrid", "bce", "both")
_D = FinetuneConfig()
RULE_DEFAULTS: dict[str, Any] = {
    k: getattr(_D, k)
    for k in ("prior_tolerance", "prior_bce_ratio", "min_gain", "se_margin", "min_auc", "patience")
}
"""Today's rule parameters (older jobs predate some of them): every job is replayed under these."""


def candidates(val: dict[str, Any]) -> tuple[Candidate, list[Candidate], dict[int, float]]:
    """Parent and candidates as AUC-scored Candidates, plus each step's held-out BCE."""

    def cand(e: dict[str, Any], step: int) -> Candidate:
        pr = e.get("prior") or {}
        return Candidate(
            step,
            float(e["new"]["auc"]),
            float(pr.get("auc", 0.0)),
            float(e.get("prior_slack", 0.0)),
            float(pr.get("bce", 0.0)),
            float(e["new"]["auc"]),
        )

    parent = cand(val["parent"], -1)
    cands = [cand(e, int(e["step"])) for e in val["curve"]]
    bce = {int(e["step"]): float(e["new"]["bce"]) for e in val["curve"]}
    bce[-1] = float(val["parent"]["new"]["bce"])
    return parent, cands, bce


def replay(
    val: dict[str, Any], cfg: dict[str, Any], rule: str, limit: int | None = None
) -> dict[str, Any]:
    """The step ``rule`` ships on this curve (None: no improvement) and where it stops."""
    parent, cands, bce = candidates(val)
    se = float(val.get("se", 0.0))
    cfg = {**RULE_DEFAULTS, "eval_every": cfg["eval_every"]}
    tol, ratio = float(cfg["prior_tolerance"]), float(cfg["prior_bce_ratio"])
    gate = max(float(cfg["min_gain"]), float(cfg["se_margin"]) * se)
    window = int(cfg["patience"]) * int(cfg["eval_every"])
    best: Candidate | None = None
    stopped_at = None
    for c in cands:
        if limit is not None and c.step > limit:
            break
        ok = early_stop.eligible(c, parent, tol, ratio)
        if rule == "auc":
            better = ok and c.new > (best.new if best else parent.new)
        elif rule == "hybrid":
            qualifies = c.new - parent.new > gate and c.new_auc >= float(cfg["min_auc"])
            better = ok and qualifies and (best is None or bce[c.step] < bce[best.step])
        elif rule == "both":
            qualifies = c.new - parent.new > gate and c.new_auc >= float(cfg["min_auc"])
            better = ok and qualifies and (best is None or c.new + c.prior > best.new + best.prior)
        else:
            better = ok and bce[c.step] < bce[best.step if best else -1]
        if better:
            best = c
        last_best = best.step if best else -1
        if c.step - last_best >= window:
            stopped_at = c.step
            break
    chosen: int | None = None
    if best is not None:
        if rule == "auc":
            hit = early_stop.choose(
                [best],
                parent,
                tol,
                float(cfg["min_gain"]),
                se,
                float(cfg["se_margin"]),
                ratio,
                float(cfg["min_auc"]),
            )
            chosen = hit.step if hit else None
        elif rule in ("hybrid", "both"):
            chosen = best.step
        else:
            gain = bce[-1] - bce[best.step]
            chosen = best.step if gain > float(cfg["min_gain"]) else None
    return {"step": chosen, "stopped_at": stopped_at}


def served(bench: dict[str, Any], ch: str, n: str) -> dict[int, float]:
    """Served success by step where measured (sweep snapshots, the early-stopped child)."""
    row = bench["challenges"].get(ch, {})
    out: dict[int, float] = {}
    run = row.get("runs", {}).get(n)
    if run is not None:
        step = run["chosen_step"]
        out[-1 if step is None else int(step)] = float(run["challenge"]["success"])
        out.setdefault(-1, float(row["parent"]["success"]))
    if n == str(max(int(k) for k in row.get("runs", {"0": 0}))):
        for s, r in row.get("sweep", {}).items():
            out[int(s)] = float(r["challenge"]["success"])
    return out


def main() -> None:
    dirs = [Path(a) for a in sys.argv[1:]]
    rows: list[dict[str, Any]] = []
    for d in dirs:
        bench_file = d / "partial.json"
        bench = json.loads(bench_file.read_text()) if bench_file.is_file() else {"challenges": {}}
        for res in sorted(d.glob("*/*/result.json")):
            job = res.parent.name
            kind, _, n = job.partition("-")
            if kind not in ("ft", "sweep"):
                continue
            meta = json.loads(res.read_text())["meta"]
            cfg = meta["training"]["config"]
            if cfg.get("init") != "parent":
                continue
            ch = res.parent.parent.name
            val = meta["validation"]
            succ = served(bench, ch, n)
            row: dict[str, Any] = {
                "dir": str(d),
                "challenge": ch,
                "job": job,
                "shift": bool(meta["training"].get("action_shift", {}).get("adopted")),
                "stored_choice": meta["training"]["chosen_step"],
                "served": {str(k): v for k, v in sorted(succ.items())},
            }
            for rule in RULES:
                r = replay(val, cfg, rule)
                step = r["step"]
                r["served"] = succ.get(-1 if step is None else step)
                row[rule] = r
            rows.append(row)
            print(
                f"{d.name} {ch} {job}: stored {row['stored_choice']} | "
                + " | ".join(f"{k} {row[k]['step']} ({row[k]['served']})" for k in RULES),
                file=sys.stderr,
            )
    print(json.dumps({"rules": list(RULES), "jobs": rows}))


if __name__ == "__main__":
    main()
