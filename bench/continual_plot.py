"""The PNG of ``bench/continual.py``: recovery against grasps since the change, one panel per
challenge, a line per mode with its 95% interval as bars (matplotlib, drawn off-screen as
trainer/demo/plot.py draws the demo's)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

COLOURS = ((0.1, 0.3, 0.85), (0.85, 0.35, 0.1), (0.2, 0.6, 0.2), (0.5, 0.2, 0.6))
"""One colour per mode, in the order the modes were given."""


def write_png(result: Mapping[str, Any], path: Path) -> None:
    """Draw ``result`` (the bench's JSON object) into ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    challenges = list(result["challenges"])
    modes = list(result["modes"])
    cols = min(3, max(1, len(challenges)))
    rows = math.ceil(len(challenges) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    for i, name in enumerate(challenges):
        ax = fig.add_subplot(rows, cols, i + 1)
        row = result["challenges"][name]
        for j, mode in enumerate(modes):
            points = row["modes"].get(mode, {}).get("checkpoints", [])
            xs, ys, lo, hi = [], [], [], []
            for p in points:
                if p.get("recovery") is None:
                    continue
                r = p["recovery"]
                ci = p.get("recovery_ci95") or [r, r]
                xs.append(p["since_change"] * (1 + 0.03 * (j - (len(modes) - 1) / 2)))
                ys.append(r)
                lo.append(r - ci[0])
                hi.append(ci[1] - r)
            if xs:
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[lo, hi],
                    color=COLOURS[j % len(COLOURS)],
                    marker="o",
                    ms=4,
                    capsize=3,
                    lw=1.3,
                    label=mode,
                )
        for level, style in ((0.0, "-"), (1.0, "-"), (0.75, ":"), (0.9, ":")):
            ax.axhline(level, color="0.6", lw=0.8, ls=style)
        base = row.get("base_challenge", {})
        drop = row.get("drop")
        note = f"base {base.get('success', float('nan')):.0%}" if base else ""
        if drop is not None:
            note += f", drop {drop:.0%}"
        ax.set_title(f"{name} ({note})", fontsize=9)
        ax.set_xscale("log", base=2)
        ticks = result["checkpoints"]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("grasps since the change", fontsize=8)
        ax.set_ylabel("share of the drop recovered", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "bench/continual: share of the drop recovered by the served policy\n"
        f"(re-evaluated on {result['eval']['grasps']} grasps per point, 95% intervals; "
        f"seed {result['seed']})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Title": "bench/continual recovery"})
