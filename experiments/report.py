"""Where an experiment's result goes: ``NAME.json`` (every figure with its N and 95%
interval), ``NAME.md`` (the table) and ``NAME.png`` under one folder, written whole
(a temporary file renamed over the old one, so a killed run leaves the last result)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
"""The committed results (``--out``'s default in every experiment)."""


def pct(x: float) -> str:
    """A rate as a percentage with one decimal."""
    return f"{100 * x:.1f}%"


def rate_cell(fig: Mapping[str, Any]) -> str:
    """``success [lo, hi] (n=N)`` of a figure with ``success``, ``ci95`` and ``n``."""
    lo, hi = fig["ci95"]
    return f"{pct(fig['success'])} [{pct(lo)}, {pct(hi)}] (n={fig['n']})"


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_result(
    out: Path,
    name: str,
    result: Mapping[str, Any],
    table: str,
    draw: Callable[[Figure], None],
    size: tuple[float, float] = (7.0, 4.0),
) -> dict[str, str]:
    """Write ``out/NAME.json``, ``.md`` and ``.png`` (``draw`` fills a fresh figure of
    ``size`` inches); returns the three paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{name}.{k}" for k in ("json", "md", "png")}
    _replace(paths["json"], (json.dumps(result, indent=1) + "\n").encode())
    _replace(paths["md"], table.encode())
    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    draw(fig)
    fig.tight_layout()
    tmp = paths["png"].with_name(f".{name}.png.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, paths["png"])
    return {k: str(v) for k, v in paths.items()}
