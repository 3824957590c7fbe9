"""Table III in simulation: a continual lineage through the paper's five challenges against
single-step fine-tuning from the base policy, with the continual-learning measures the paper
did not report (average success, forgetting, backward and forward transfer).

Usage: python -m experiments.table3 [--grasps 800] [--eval-grasps 400] [--eval-seeds 4]
           [--base-grasps 4000] [--max-steps 1000] [--threads 2] [--workers 2]
           [--work runs/table3] [--out docs/results] [--quick]

The lineage (the paper's section V-C): the base policy explores ``--grasps`` grasps of
harsh lighting (training objects, 20% exploratory actions, as bench/finetune.py collects),
is fine-tuned on them (``trainer.finetune`` defaults, the strict offline gate: the recipe
of Table II), and its child explores and is fine-tuned on transparent objects, then
checkerboard, extended gripper and offset gripper. A job that returns no child leaves its
parent in the lineage. Single-step: the base policy fine-tuned on each challenge alone, on
its own exploration. Every fine-tune mixes the new grasps 50/50 with the same base replay
data (``--base-grasps`` grasps of the base policy on baseline).

Every lineage member (and the base) is evaluated on every condition (test objects, CEM 64
x 3, ``--eval-grasps`` over ``--eval-seeds`` bins, the same bins for every policy, Wilson
95%); each single-step child on its challenge. R[i][j] is member i on challenge j (member 0
the base). Average success: the last member's mean over the challenges. Forgetting of
challenge j by member i > j: R[j][j] - R[i][j]; backward transfer: the mean of R[5][j] -
R[j][j]; forward transfer: the mean of R[i-1][i] - R[0][i] (what the previous member
already knew of challenge i). Differences carry a normal 95% interval. Work (data,
fine-tunes, the evaluation cache) is kept under ``--work`` and reused on a rerun, so a
killed run resumes. Writes ``table3.json``, ``table3.md`` and ``table3.png`` under
``--out``; progress on stderr; the last line of stdout is the JSON. ``--quick``: two
challenges, 16 grasps each, a tiny fine-tune (no probes, the race gate so that a child
usually ships), 8-grasp evaluations (the smoke run; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from bench.finetune import Evaluator, log, run_job
from bench.flags import flags, parser
from experiments.report import RESULTS, pct, rate_cell, write_result
from trainer.basedata import DatasetSpec, collect_dataset
from trainer.finetune import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("harsh_lighting", "transparent", "checkerboard", "extend_gripper", "offset_gripper")
"""The paper's order of the continual experiment."""
PAPER: dict[str, tuple[float, float, float | None]] = {
    "harsh_lighting": (0.63, 0.32, None),
    "transparent": (0.74, 0.25, 0.08),
    "checkerboard": (0.86, 0.36, -0.04),
    "extend_gripper": (0.88, 0.12, -0.05),
    "offset_gripper": (0.91, 0.44, -0.07),
}
"""The paper's Table III: continual success, delta against base, delta against single."""


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a - b`` of two independent success figures with a normal 95% interval."""
    d = a["success"] - b["success"]
    var = sum(f["success"] * (1 - f["success"]) / max(f["n"], 1) for f in (a, b))
    h = 1.96 * math.sqrt(var)
    return {"value": round(d, 4), "ci95": [round(d - h, 4), round(d + h, 4)]}


def mean_diff(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any] | None:
    """The mean of ``a - b`` over pairs, with a normal 95% interval (None: no pairs)."""
    if not pairs:
        return None
    k = len(pairs)
    d = sum(a["success"] - b["success"] for a, b in pairs) / k
    var = sum(f["success"] * (1 - f["success"]) / max(f["n"], 1) for p in pairs for f in p)
    h = 1.96 * math.sqrt(var) / k
    return {"value": round(d, 4), "ci95": [round(d - h, 4), round(d + h, 4)], "pairs": k}


def measures(r: list[dict[str, dict[str, Any]]], order: list[str]) -> dict[str, Any]:
    """The continual-learning measures of the matrix ``r`` (``r[i][condition]``, member 0 the
    base, member i trained on ``order[i-1]``)."""
    t = len(order)
    last = r[t]
    acc = sum(last[c]["success"] for c in order) / t
    forgetting = {
        f"{order[i - 1]}:{order[j - 1]}": diff(r[j][order[j - 1]], r[i][order[j - 1]])
        for i in range(2, t + 1)
        for j in range(1, i)
    }
    return {
        "average_success": round(acc, 4),
        "forgetting": forgetting,
        "backward_transfer": mean_diff(
            [(last[order[j - 1]], r[j][order[j - 1]]) for j in range(1, t)]
        ),
        "forward_transfer": mean_diff(
            [(r[i - 1][order[i - 1]], r[0][order[i - 1]]) for i in range(2, t + 1)]
        ),
    }


def run(a: argparse.Namespace, cfg: FinetuneConfig, order: list[str]) -> dict[str, Any]:
    """Train the lineage and the single-step children, evaluate them; the JSON-ready result."""
    t0 = time.monotonic()
    work: Path = a.work
    work.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(work, a.eval_grasps, a.eval_seeds, a.workers)
    base = a.parent
    prior = work / f"base-{a.base_grasps}"
    spec = DatasetSpec(bundle=base, grasps=a.base_grasps, workers=a.workers, seed=7)
    collect_dataset(spec, prior, progress=False)
    lineage, single, jobs = [base], {}, {}
    for i, ch in enumerate(order):
        log(f"== {ch}: lineage member {i + 1}")
        for kind, parent, seed in (("lineage", lineage[-1], 21 + i), ("single", base, 11)):
            spec = DatasetSpec(parent, a.grasps, ch, workers=a.workers, seed=seed)
            data = collect_dataset(spec, work / ch / f"{kind}-explore", progress=False)
            new = work / ch / f"{kind}-explore"
            job = run_job(cfg, parent, new, prior, work / ch / kind, f"{kind} {ch}")
            job["explore"] = data
            child = Path(job["path"]) if job["path"] else parent
            jobs[f"{kind}:{ch}"] = {k: job[k] for k in ("status", "bundle", "chosen_step")}
            if kind == "lineage":
                lineage.append(child)
            else:
                single[ch] = child
    conditions = ["baseline", *order]
    r = [{c: _brief(ev(m, c)) for c in conditions} for m in lineage]
    rows = {}
    for i, ch in enumerate(order, start=1):
        s = _brief(ev(single[ch], ch))
        cont, wanted = r[i][ch], PAPER.get(ch)
        rows[ch] = {
            "continual": cont,
            "base": r[0][ch],
            "single": s,
            "vs_base": diff(cont, r[0][ch]),
            "vs_single": diff(cont, s),
            "paper": None
            if wanted is None
            else {"continual": wanted[0], "vs_base": wanted[1], "vs_single": wanted[2]},
        }
    return {
        "experiment": "table3",
        "quick": a.quick,
        "order": order,
        "grasps": a.grasps,
        "eval": {"grasps": a.eval_grasps, "seeds": a.eval_seeds},
        "finetune": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "lineage": [_id(m) for m in lineage],
        "jobs": jobs,
        "challenges": rows,
        "matrix": r,
        "measures": measures(r, order),
        "wall_s": round(time.monotonic() - t0, 1),
    }


def _brief(fig: dict[str, Any]) -> dict[str, Any]:
    return {k: fig[k] for k in ("bundle", "success", "n", "ci95")}


def _id(bundle: Path) -> str:
    return str(json.loads((bundle / "meta.json").read_text())["id"])


def _signed(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    lo, hi = d["ci95"]
    return f"{100 * d['value']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def table(res: dict[str, Any]) -> str:
    """The markdown tables: Table III beside the paper's, the matrix, the measures."""
    order = res["order"]
    out = [
        "# Table III in simulation: a continual lineage against single-step fine-tuning",
        "",
        f"{res['grasps']} exploration grasps per challenge; test objects, "
        f"{res['eval']['grasps']} grasps per evaluation; deltas with 95% intervals (points).",
        "",
        "| challenge | continual | vs base | vs single | single | paper continual | paper "
        "vs base | paper vs single |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ch, row in res["challenges"].items():
        p = row["paper"] or {}
        paper = [
            pct(p["continual"]) if p else "-",
            f"{100 * p['vs_base']:+.0f}" if p else "-",
            "-" if p.get("vs_single") is None else f"{100 * p['vs_single']:+.0f}",
        ]
        out.append(
            f"| {ch} | {rate_cell(row['continual'])} | {_signed(row['vs_base'])} | "
            f"{_signed(row['vs_single'])} | {rate_cell(row['single'])} | "
            + " | ".join(paper)
            + " |"
        )
    out += ["", "Every lineage member on every condition (member 0: the base policy):", ""]
    out.append("| member (trained on) | " + " | ".join(["baseline", *order]) + " |")
    out.append("|---" * (len(order) + 2) + "|")
    for i, row in enumerate(res["matrix"]):
        name = "0 (base)" if i == 0 else f"{i} ({order[i - 1]})"
        out.append(f"| {name} | " + " | ".join(pct(row[c]["success"]) for c in row) + " |")
    m = res["measures"]
    out += [
        "",
        f"- Average success of the last member over the challenges: {pct(m['average_success'])}",
        f"- Backward transfer (last member minus each member on its own challenge): "
        f"{_signed(m['backward_transfer'])} points",
        f"- Forward transfer (each member on the next challenge minus the base): "
        f"{_signed(m['forward_transfer'])} points",
        "- Forgetting (member on an earlier challenge, drop since that challenge was learned):",
    ]
    out += [f"  - {k.replace(':', ' forgets ')}: {_signed(v)}" for k, v in m["forgetting"].items()]
    return "\n".join(out) + "\n"


def draw(res: dict[str, Any]) -> Any:
    """Left: base, single, continual per challenge; right: the matrix as a heat map."""

    def fill(fig: Any) -> None:
        order = res["order"]
        ax = fig.add_subplot(1, 2, 1)
        rows = [res["challenges"][c] for c in order]
        for k, (key, label) in enumerate(
            (("base", "base"), ("single", "single-step"), ("continual", "continual"))
        ):
            ax.bar(
                [i + (k - 1) * 0.27 for i in range(len(order))],
                [r[key]["success"] for r in rows],
                0.27,
                label=label,
            )
        ax.set_xticks(range(len(order)), [c.replace("_", "\n") for c in order], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("grasp success")
        ax.legend(fontsize=7)
        ax.set_title("Table III: continual against single-step", fontsize=9)
        hm = fig.add_subplot(1, 2, 2)
        conds = ["baseline", *order]
        grid = [[row[c]["success"] for c in conds] for row in res["matrix"]]
        im = hm.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        for i, line in enumerate(grid):
            for j, v in enumerate(line):
                hm.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7, color="w")
        hm.set_xticks(range(len(conds)), [c.replace("_", "\n") for c in conds], fontsize=7)
        hm.set_yticks(range(len(grid)), ["base", *(f"{i}" for i in range(1, len(grid)))])
        hm.set_ylabel("lineage member")
        hm.set_title("every member on every condition (%)", fontsize=9)
        fig.colorbar(im, ax=hm, fraction=0.04)

    return fill


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--parent", type=Path, default=ROOT / "policies" / "base")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "table3")
    flags(
        ap,
        grasps=800,
        eval_grasps=400,
        eval_seeds=4,
        base_grasps=4000,
        max_steps=FinetuneConfig().max_steps,
        threads=2,
        workers=min(2, os.cpu_count() or 1),
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true", help="the test tier's smoke run")
    a = ap.parse_args()
    cfg = FinetuneConfig(max_steps=a.max_steps, threads=a.threads, gate="strict")
    order = list(ORDER)
    if a.quick:
        order, a.grasps, a.base_grasps = order[:2], 16, 40
        a.eval_grasps, a.eval_seeds, a.workers = 8, 1, 1
        cfg = dataclasses.replace(
            cfg,
            max_steps=8,
            eval_every=4,
            batch_size=16,
            patience=1,
            augment="off",
            shift_search=False,
            max_eval=64,
            gate="race",
        )
    if not (a.parent / "meta.json").is_file():
        ap.error(f"--parent {a.parent}: no meta.json (not a policy bundle)")
    res = run(a, cfg, order)
    res["files"] = write_result(a.out, "table3", res, table(res), draw(res), (11.0, 4.2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
