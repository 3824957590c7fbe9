"""Table I in simulation: the shipped base policy on every condition, beside the paper's
real-robot Table I.

Usage: python -m experiments.table1 [--bundle DIR] [--grasps 800] [--seeds 8] [--seed 3000]
           [--cem-iterations 2] [--workers 2] [--out docs/results] [--quick]

Each condition at its default severity (drivers/sim/conditions.py) is served exactly as the
daemon serves it (bench/policy_eval.py: ONNX Runtime, CEM 64 samples x ``--cem-iterations``,
the daemon's default 2) on the held-out test objects, ``--grasps`` over ``--seeds`` bins,
the same bin seeds for every condition; Wilson 95% intervals. Delta is the condition's
success minus baseline's. Writes ``table1.json``, ``table1.md`` and ``table1.png`` under
``--out``; progress on stderr; the last line of stdout is the JSON. ``--quick``: 16 grasps
per condition (the test tier's smoke run; its figures mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.flags import flags, parser
from bench.policy_eval import evaluate
from drivers.sim.conditions import CONDITION_NAMES, condition_params, make_condition
from experiments.report import RESULTS, pct, rate_cell, write_result

ROOT = Path(__file__).resolve().parents[1]
PAPER: dict[str, tuple[str, float]] = {
    "baseline": ("original training conditions", 0.86),
    "checkerboard": ("Checkerboard Backing", 0.50),
    "harsh_lighting": ("Harsh Lighting", 0.31),
    "extend_gripper": ("Extend Gripper 1 cm", 0.76),
    "offset_gripper": ("Offset Gripper 10 cm", 0.47),
    "transparent": ("Transparent Bottles", 0.49),
}
"""The paper's Table I (real robot, its hard test subset): task and base-policy success."""


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the bundle on every condition; the JSON-ready result."""
    t0 = time.monotonic()
    rows: dict[str, Any] = {}
    for name in CONDITION_NAMES:
        fig = evaluate(
            a.bundle,
            name,
            {},
            a.grasps,
            a.seed,
            a.seeds,
            a.workers,
            cem_iterations=a.cem_iterations,
        )
        task, paper = PAPER[name]
        rows[name] = {
            "severity": condition_params(make_condition(name)),
            "success": fig["success"],
            "n": fig["n"],
            "ci95": fig["ci95"],
            "paper": {"task": task, "success": paper, "delta": round(paper - 0.86, 2)},
        }
    base = rows["baseline"]["success"]
    for row in rows.values():
        row["delta"] = round(row["success"] - base, 4)
    meta = json.loads((a.bundle / "meta.json").read_text())
    return {
        "experiment": "table1",
        "quick": a.quick,
        "bundle": meta.get("id"),
        "grasps": a.grasps,
        "seeds": a.seeds,
        "seed": a.seed,
        "cem": {"samples": 64, "iterations": a.cem_iterations},
        "conditions": rows,
        "wall_s": round(time.monotonic() - t0, 1),
    }


def table(res: dict[str, Any]) -> str:
    """The markdown table, sim beside paper."""
    lines = [
        f"# Table I in simulation (base policy `{res['bundle']}`)",
        "",
        f"Test objects, CEM 64 x {res['cem']['iterations']}, {res['grasps']} grasps over "
        f"{res['seeds']} bins per condition (seed {res['seed']}); Wilson 95% intervals. "
        "Paper: the real robot, its hard test subset.",
        "",
        "| condition | severity | sim success | sim delta | paper task | paper | paper delta |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in res["conditions"].items():
        sev = ", ".join(f"{k}={v:g}" for k, v in r["severity"].items()) or "-"
        d = "" if name == "baseline" else f"{100 * r['delta']:+.1f}"
        pd = "" if name == "baseline" else f"{100 * r['paper']['delta']:+.0f}"
        lines.append(
            f"| {name} | {sev} | {rate_cell(r)} | {d} | {r['paper']['task']} | "
            f"{pct(r['paper']['success'])} | {pd} |"
        )
    return "\n".join(lines) + "\n"


def draw(res: dict[str, Any]) -> Any:
    """Grouped bars: sim (with its interval) and paper per condition."""

    def fill(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        names = list(res["conditions"])
        rows = [res["conditions"][n] for n in names]
        x = range(len(names))
        sim = [r["success"] for r in rows]
        err = [
            [r["success"] - r["ci95"][0] for r in rows],
            [r["ci95"][1] - r["success"] for r in rows],
        ]
        ax.bar([i - 0.2 for i in x], sim, 0.4, yerr=err, capsize=3, label="sim (95% CI)")
        ax.bar([i + 0.2 for i in x], [r["paper"]["success"] for r in rows], 0.4, label="paper")
        ax.set_xticks(list(x), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("grasp success")
        ax.set_title(f"Table I: base policy {res['bundle']} per condition")
        ax.legend(fontsize=8)

    return fill


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--bundle", type=Path, default=ROOT / "policies" / "base")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quick", action="store_true", help="the test tier's smoke run")
    flags(ap, grasps=800, seeds=8, seed=3000, cem_iterations=2, workers=min(2, os.cpu_count() or 1))
    a = ap.parse_args()
    if a.quick:
        a.grasps, a.seeds, a.workers = 16, 2, 1
    if a.grasps < a.seeds or a.seeds < 1:
        ap.error("--grasps must be at least --seeds, and --seeds at least 1")
    if not (a.bundle / "meta.json").is_file():
        ap.error(f"--bundle {a.bundle}: no meta.json (not a policy bundle)")
    res = run(a)
    res["files"] = write_result(a.out, "table1", res, table(res), draw(res), (8.0, 4.0))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
