"""Plot validation measures against real success over fine-tuning steps (from a bench run).

Usage: python -m bench.finetune_plot [--out DIR ...] [--png docs/img/finetune_measures.png]
       python -m bench.finetune_plot --table DIR ...

Reads ``partial.json`` of ``bench/finetune.py`` (the served success of the
sweep's snapshots) and each swept challenge's fine-tune record (the held-out
validation curve: AUC, BCE and Brier on new and prior data every 50 steps),
draws one panel per challenge and prints, as the last stdout line, a JSON
object with the figures and the Spearman correlation of each measure with
real success over the snapshot steps (parent included as step 0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if len(a) < 3 or np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def pct(fig: dict[str, Any] | None) -> str:
    """'78.8% (75-82)' from a policy_eval figure."""
    if not fig:
        return "-"
    lo, hi = fig["ci95"]
    return f"{fig['success']:.1%} ({lo * 100:.0f}-{hi * 100:.0f})"


def table(dirs: list[Path]) -> str:
    """Markdown table of every challenge row in the given bench output directories."""
    lines = [
        "| challenge | N | parent | child | recovered | child on baseline "
        "| status, step (of run), aug, shift |",
        "|---|---|---|---|---|---|---|",
    ]
    scratch = [
        "| challenge | N | scratch (served) | scratch steps | fine-tuned child |",
        "|---|---|---|---|---|",
    ]
    for d in dirs:
        f = d / "partial.json"
        if not f.is_file():
            continue
        res = json.loads(f.read_text())
        for ch, row in res["challenges"].items():
            for n, r in row["runs"].items():
                rec = json.loads((d / ch / f"ft-{n}" / "result.json").read_text())["meta"]
                sh = rec["training"].get("action_shift", {})
                shift = f"{sh['shift_m'][0] * 100:+.1f} cm" if sh.get("adopted") else "0"
                lines.append(
                    f"| {ch} | {n} | {pct(row['parent'])} | {pct(r['challenge'])} | "
                    f"{r['recovered']} | {pct(r['baseline'])}"
                    + (
                        f"; unshifted {pct(r['baseline_unshifted'])}"
                        if "baseline_unshifted" in r
                        else ""
                    )
                    + f" | {r['status']}, "
                    f"{r['chosen_step']} ({r['steps_run']}), {r['augment']}, {shift} |"
                )
            sc = row.get("scratch")
            if sc:
                n = max(int(k) for k in row["runs"])
                scratch.append(
                    f"| {ch} | {n} | {pct(sc['challenge'])} | {sc['steps_run']} | "
                    f"{pct(row['runs'][str(n)]['challenge'])} |"
                )
    return "\n".join([*lines, "", *scratch])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, nargs="+", default=[ROOT / "runs" / "bench-ft3"])
    ap.add_argument("--table", type=Path, nargs="*", default=None, help="print markdown tables")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "finetune_measures.png")
    args = ap.parse_args()
    if args.table is not None:
        print(table(args.table or args.out))
        return
    panels: dict[str, Any] = {}
    rows = []
    for d in args.out:
        res = json.loads((d / "partial.json").read_text())
        rows += [(d, ch, row) for ch, row in res["challenges"].items()]
    for out_dir, ch, row in rows:
        if "sweep" not in row:
            continue
        n = max(int(k) for k in row["runs"])
        rec = json.loads((out_dir / ch / f"sweep-{n}" / "result.json").read_text())
        curve = rec["meta"]["validation"]["curve"]
        parent = rec["meta"]["validation"]["parent"]
        arm = "noaug" if not rec["meta"]["training"]["augment"] else "aug"
        curve = [e for e in curve if e["arm"] == arm]
        steps = [0] + [int(s) for s in row["sweep"]]
        success = [row["parent"]["success"]] + [
            v["challenge"]["success"] for v in row["sweep"].values()
        ]
        by_step = {e["step"]: e for e in curve}
        es = row["runs"][str(n)]
        if 0 in by_step and es["chosen_step"] == 0:  # "shift only" was served as the child
            success[0] = es["challenge"]["success"]
        by_step.setdefault(0, parent)  # step 0 is "shift only" when a shift was adopted
        meas = {
            "auc": [by_step[s]["new"]["auc"] for s in steps],
            "-bce": [-by_step[s]["new"]["bce"] for s in steps],
            "-brier": [-by_step[s]["new"]["brier"] for s in steps],
        }
        panels[ch] = {
            "steps": steps,
            "success": success,
            "measures": meas,
            "spearman": {k: round(spearman(v, success), 3) for k, v in meas.items()},
            "early_stopped": {
                "step": es["chosen_step"],
                "success": es["challenge"]["success"],
            },
            "curve": {
                "steps": [0] + [e["step"] for e in curve if e["step"] > 0],
                "auc": [by_step[0]["new"]["auc"]]
                + [e["new"]["auc"] for e in curve if e["step"] > 0],
                "bce": [by_step[0]["new"]["bce"]]
                + [e["new"]["bce"] for e in curve if e["step"] > 0],
                "prior_auc": [by_step[0]["prior"]["auc"]]
                + [e["prior"]["auc"] for e in curve if e["step"] > 0],
            },
        }
    if panels:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (ch, p) in zip(axes[0], panels.items(), strict=True):
            ax.plot(p["steps"], p["success"], "ko-", label="real success (served, test objects)")
            es = p["early_stopped"]
            if es["step"] is not None:
                ax.plot([es["step"]], [es["success"]], "r*", ms=14, label="early-stopped child")
            ax.set_xlabel("fine-tuning steps")
            ax.set_ylabel("success / held-out AUC")
            c = p["curve"]
            ax.plot(c["steps"], c["auc"], "b.-", label="held-out AUC (new)")
            ax.plot(c["steps"], c["prior_auc"], "c:", label="held-out AUC (prior)")
            ax2 = ax.twinx()
            ax2.plot(c["steps"], c["bce"], "g.--", label="held-out BCE (new)")
            ax2.set_ylabel("BCE")
            ax.set_title(f"{ch}: spearman auc {p['spearman']['auc']}, -bce {p['spearman']['-bce']}")
            ax.legend(loc="lower right", fontsize=7)
            ax2.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=90)
    print(
        json.dumps(
            {
                k: {
                    kk: v[kk]
                    for kk in ("steps", "success", "measures", "spearman", "early_stopped")
                }
                for k, v in panels.items()
            }
        )
    )


if __name__ == "__main__":
    main()
