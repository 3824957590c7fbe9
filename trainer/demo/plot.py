"""The demo's PNG: rolling success against grasp index, with condition changes, alarms, job
submissions and results, swaps and rollbacks marked.

:func:`plot_data` is pure (what to draw); :func:`write_png` draws it with matplotlib when it is
installed (the ``[test]`` extra has it) and with OpenCV otherwise (always installed), so the
demo needs nothing extra.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from trainer.demo.analysis import Grasp, Marker, Summary, rolling

Backend = Literal["auto", "matplotlib", "cv2"]

DRAWN = ("alarm", "condition", "job", "job_result", "swap", "rollback", "rejected")
"""Marker kinds drawn (probation verdicts are only in the text summary)."""
LANES = {
    "alarm": 1.04,
    "condition": 1.04,
    "job": 1.09,
    "job_result": 1.09,
    "swap": 1.14,
    "rollback": 1.14,
}
"""Height of each kind's symbols above the curve (rejected shares the swap lane)."""
COLOURS = {
    "alarm": (0.85, 0.1, 0.1),
    "condition": (0.45, 0.0, 0.0),
    "job": (0.1, 0.3, 0.85),
    "job_result": (0.5, 0.2, 0.7),
    "swap": (0.1, 0.6, 0.2),
    "rollback": (0.95, 0.55, 0.0),
    "rejected": (0.2, 0.2, 0.2),
}
"""RGB in [0, 1] per marker kind."""
NAMES = {
    "alarm": "alarm",
    "condition": "new condition marked",
    "job": "job submitted",
    "job_result": "job result",
    "swap": "swap",
    "rollback": "rollback",
    "rejected": "bundle rejected",
}
"""Legend text per marker kind."""
SYMBOLS = {
    "alarm": "v",
    "condition": "*",
    "job": "s",
    "job_result": "D",
    "swap": "^",
    "rollback": "X",
    "rejected": "x",
}
"""matplotlib marker per kind."""
SHADES = ((0.93, 0.95, 0.98), (0.98, 0.95, 0.90))
"""Alternating background of the condition segments."""


@dataclass(frozen=True)
class Level:
    """A horizontal line: a success rate over a range of grasps."""

    start: int
    """First grasp index."""
    end: int
    """One past the last."""
    rate: float
    """Success rate over it."""


@dataclass(frozen=True)
class PlotData:
    """Everything the PNG shows."""

    rolling: tuple[float, ...]
    """Rolling success at each grasp index."""
    window: int
    """Its window in grasps."""
    segments: tuple[tuple[str, int, int], ...]
    """(condition, start, end) of the world's conditions."""
    levels: tuple[Level, ...]
    """Success between change and swap, and after the swap, per segment."""
    markers: tuple[Marker, ...]
    """The drawn events."""
    title: str
    """Figure title."""


def plot_data(
    grasps: Sequence[Grasp], summary: Summary, window: int = 50, title: str = ""
) -> PlotData:
    """What to draw for a run."""
    levels: list[Level] = []
    for s in summary.segments:
        cut = s.swap if s.swap is not None else s.end
        if s.between.rate is not None and cut > s.start:
            levels.append(Level(s.start, cut, s.between.rate))
        if s.after is not None and s.after.rate is not None and s.swap is not None:
            levels.append(Level(s.swap, s.end, s.after.rate))
    return PlotData(
        rolling=tuple(rolling([g.success for g in grasps], window)),
        window=window,
        segments=tuple((s.condition, s.start, s.end) for s in summary.segments),
        levels=tuple(levels),
        markers=tuple(m for m in summary.markers if m.kind in DRAWN),
        title=title or f"{len(grasps)} grasps",
    )


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_png(data: PlotData, path: Path, backend: Backend = "auto") -> str:
    """Draw ``data`` into ``path``; returns the backend used ("matplotlib" or "cv2")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if backend == "matplotlib" or (backend == "auto" and have_matplotlib()):
        _matplotlib(data, path)
        return "matplotlib"
    _cv2(data, path)
    return "cv2"


def _matplotlib(data: PlotData, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(12, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n = max(1, len(data.rolling))
    for i, (name, start, end) in enumerate(data.segments):
        ax.axvspan(start, end, color=SHADES[i % 2], lw=0)
        ax.text((start + end) / 2, 0.02, name, ha="center", va="bottom", fontsize=9)
        if i:
            ax.axvline(start, color="black", ls="--", lw=1)
    ax.plot(range(len(data.rolling)), data.rolling, color="black", lw=1.2)
    for lv in data.levels:
        ax.hlines(lv.rate, lv.start, lv.end, colors="0.45", lw=2, alpha=0.8)
    seen: set[str] = set()
    for m in data.markers:
        colour = COLOURS[m.kind]
        if m.kind in ("swap", "rollback", "rejected"):
            ax.axvline(m.index, color=colour, lw=1, alpha=0.8)
        y = LANES.get(m.kind, 1.14)
        ax.scatter([m.index], [y], marker=SYMBOLS[m.kind], color=colour, s=36, zorder=3)
        seen.add(m.kind)
    handles = [Line2D([], [], color="black", lw=1.2, label=f"success, last {data.window}")]
    handles.append(Line2D([], [], color="0.45", lw=2, label="mean: change->swap, after swap"))
    handles += [
        Line2D([], [], color=COLOURS[k], marker=SYMBOLS[k], ls="", label=NAMES[k])
        for k in DRAWN
        if k in seen
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=8, ncol=4, bbox_to_anchor=(0, 0.06))
    ax.set_xlim(0, n)
    ax.set_ylim(0, 1.18)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("grasp")
    ax.set_ylabel("grasp success")
    ax.set_title(data.title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _bgr(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    return int(rgb[2] * 255), int(rgb[1] * 255), int(rgb[0] * 255)


def _cv2(data: PlotData, path: Path) -> None:
    import cv2

    w, h = 1320, 570
    left, right, top, bottom = 70, 20, 40, 70
    img = np.full((h, w, 3), 255, np.uint8)
    n = max(1, len(data.rolling))
    pw, ph = w - left - right, h - top - bottom
    ymax = 1.18

    def px(i: float) -> int:
        return left + round(pw * i / n)

    def py(v: float) -> int:
        return top + round(ph * (1 - v / ymax))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, (name, start, end) in enumerate(data.segments):
        cv2.rectangle(img, (px(start), top), (px(end), top + ph), _bgr(SHADES[i % 2]), -1)
        cv2.putText(img, name, (px(start) + 4, py(0.03)), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        if i:
            for y in range(top, top + ph, 8):
                cv2.line(img, (px(start), y), (px(start), y + 4), (0, 0, 0), 1)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        cv2.line(img, (left, py(v)), (left + pw, py(v)), (220, 220, 220), 1)
        cv2.putText(img, f"{v:.2f}", (left - 45, py(v) + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    step = _tick_step(n)
    for x in range(0, n + 1, step):
        cv2.line(img, (px(x), top + ph), (px(x), top + ph + 5), (0, 0, 0), 1)
        cv2.putText(img, str(x), (px(x) - 12, top + ph + 20), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for lv in data.levels:
        cv2.line(img, (px(lv.start), py(lv.rate)), (px(lv.end), py(lv.rate)), (115, 115, 115), 2)
    if data.rolling:
        pts = np.array([[px(i), py(v)] for i, v in enumerate(data.rolling)], np.int32)
        cv2.polylines(img, [pts], False, (0, 0, 0), 1, cv2.LINE_AA)
    seen: list[str] = []
    for m in data.markers:
        c = _bgr(COLOURS[m.kind])
        x, y = px(m.index), py(LANES.get(m.kind, 1.14))
        if m.kind in ("swap", "rollback", "rejected"):
            cv2.line(img, (x, top), (x, top + ph), c, 1)
        cv2.circle(img, (x, y), 5, c, -1, cv2.LINE_AA)
        if m.kind not in seen:
            seen.append(m.kind)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(img, data.title[:150], (left, 25), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "grasp", (left + pw - 45, top + ph + 38), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    x = left + 60
    legend = [("black", f"success, last {data.window}")] + [(k, NAMES[k]) for k in seen]
    for kind, text in legend:
        c = (0, 0, 0) if kind == "black" else _bgr(COLOURS[kind])
        cv2.circle(img, (x, h - 16), 5, c, -1)
        cv2.putText(img, text, (x + 9, h - 11), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        x += 30 + 8 * len(text)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"OpenCV could not write {path}")


def _tick_step(n: int) -> int:
    for step in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000):
        if n / step <= 12:
            return step
    return max(1, n // 10)
