"""The demo's PNG: rolling success against grasp index, with condition changes, alarms, job
submissions and results, rounds, swaps, refused jobs and rollbacks marked, races shaded, and
each segment's success written on it.

:func:`plot_data` is pure (what to draw); :func:`write_png` draws it with matplotlib (in the
``[trainer]`` extra) and writes the run's state (complete, or where and why it stopped) into
the PNG's text chunks as well as its title.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.demo.analysis import Segment, Summary, rolling
from trainer.demo.timeline import Grasp, Marker

DRAWN = (
    "alarm",
    "condition",
    "job",
    "round",
    "job_result",
    "refused",
    "rejected",
    "swap",
    "rollback",
)
"""Marker kinds drawn, bottom lane first (probation verdicts are only in the text summary)."""
LANES = {kind: 1.03 + 0.035 * i for i, kind in enumerate(DRAWN)}
"""Height of each kind's lane above the curve: one lane per kind, so no kind hides another."""
YMAX = 1.03 + 0.035 * len(DRAWN)
"""Top of the y axis (the lanes sit above 100%)."""
COLOURS = {
    "alarm": (0.85, 0.1, 0.1),
    "condition": (0.45, 0.0, 0.0),
    "job": (0.1, 0.3, 0.85),
    "round": (0.35, 0.35, 0.65),
    "job_result": (0.1, 0.6, 0.75),
    "refused": (0.55, 0.0, 0.55),
    "rejected": (0.2, 0.2, 0.2),
    "swap": (0.1, 0.6, 0.2),
    "rollback": (0.95, 0.55, 0.0),
}
"""RGB in [0, 1] per marker kind."""
NAMES = {
    "alarm": "alarm (success drop)",
    "condition": "new condition marked: exploring",
    "job": "exploration done: job sent",
    "round": "round: its job sent",
    "job_result": "job improved",
    "refused": "job refused/failed: parent serves on",
    "rejected": "child bundle refused by the agent",
    "swap": "child swapped in",
    "rollback": "rollback",
}
"""Legend text per marker kind."""
SYMBOLS = {
    "alarm": "v",
    "condition": "*",
    "job": "s",
    "round": "|",
    "job_result": "D",
    "refused": "P",
    "rejected": "x",
    "swap": "^",
    "rollback": "X",
}
"""matplotlib marker per kind."""
SHADES = ((0.93, 0.95, 0.98), (0.98, 0.95, 0.90))
"""Alternating background of the condition segments."""
RACE = (0.55, 0.80, 0.45)
"""Colour of a race's band (drawn translucent over the segment's shade)."""


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
    notes: tuple[tuple[int, int, str], ...] = ()
    """(start, end, text) per segment: its success figures, written inside it."""
    races: tuple[tuple[int, int, str], ...] = ()
    """(start, end, result) per race: the grasps a trained child raced its parent over."""
    stopped: str = ""
    """Where and why the run stopped early ("" for a complete run), shown in red."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """PNG text chunks (Title, Description, robot-demo state)."""


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def _rounds_note(seg: Segment) -> list[str]:
    """The rounds and races of the conditions marked in the segment, if any."""
    if not seg.rounds_taken and not seg.races:
        return []
    races = seg.races
    lines = [f"rounds {seg.rounds_taken}, races {len(races)}"]
    return lines + ([f"race cost {seg.race_cost}"] if races else [])


def segment_note(seg: Segment) -> str:
    """A segment's success figures in a few short lines for the PNG."""
    n = seg.between.n
    if seg.before is None:
        lines = [f"{_pct(seg.between.rate)} (n={n})", f"false alarms {seg.false_alarms}"]
        return "\n".join(lines + _rounds_note(seg))
    lines = [f"before {_pct(seg.before.rate)}", f"change->swap {_pct(seg.between.rate)} (n={n})"]
    if seg.after is not None:
        lines.append(f"after swap {_pct(seg.after.rate)} (n={seg.after.n})")
    if seg.recovered is not None:
        lines.append(f"recovered {seg.recovered:.0%}")
    if seg.final is not None and seg.last_swap is not None and seg.last_swap != seg.swap:
        lines.append(f"after last swap {_pct(seg.final.rate)} (n={seg.final.n})")
    lines += _rounds_note(seg)
    if seg.alarm is not None:
        lines.append(f"alarm +{seg.detection_delay}")
    elif seg.carried:
        lines.append("inside an earlier exploration")
    elif seg.missed:
        lines.append("MISSED (no alarm)")
    elif not seg.dropped:
        lines.append("no drop to detect")
    return "\n".join(lines)


def plot_data(
    grasps: Sequence[Grasp],
    summary: Summary,
    window: int = 50,
    title: str = "",
    metadata: Mapping[str, str] | None = None,
) -> PlotData:
    """What to draw for a run."""
    levels: list[Level] = []
    for s in summary.segments:
        cut = s.swap if s.swap is not None else s.end
        if s.between.rate is not None and cut > s.start:
            levels.append(Level(s.start, cut, s.between.rate))
        if s.after is not None and s.after.rate is not None and s.swap is not None:
            levels.append(Level(s.swap, s.end, s.after.rate))
    stopped = "" if summary.stopped is None else summary.stopped.text()
    meta = {"robot-demo:state": "stopped early" if stopped else "complete"}
    if stopped:
        meta["robot-demo:stopped"] = stopped
    return PlotData(
        rolling=tuple(rolling([g.success for g in grasps], window)),
        window=window,
        segments=tuple((s.condition, s.start, s.end) for s in summary.segments),
        levels=tuple(levels),
        markers=tuple(m for m in summary.markers if m.kind in DRAWN),
        title=title or f"{len(grasps)} grasps",
        notes=tuple((s.start, s.end, segment_note(s)) for s in summary.segments),
        races=tuple(
            (x.started, x.span(len(grasps)).stop, x.result())
            for r in summary.rounds
            for x in r.races
        ),
        stopped=stopped,
        metadata={**meta, **(metadata or {})},
    )


def write_png(data: PlotData, path: Path) -> None:
    """Draw ``data`` into ``path`` with matplotlib; the title, the stop and ``metadata`` also
    go into the PNG's text chunks (``PIL.Image.open(path).text``)."""
    from matplotlib.artist import Artist
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(13, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    n = max(1, len(data.rolling))
    for i, (name, start, end) in enumerate(data.segments):
        ax.axvspan(start, end, color=SHADES[i % 2], lw=0)
        ax.text((start + end) / 2, 0.02, name, ha="center", va="bottom", fontsize=9, weight="bold")
        if i:
            ax.axvline(start, color="black", ls="--", lw=1)
    for start, _end, text in data.notes:
        ax.text(
            start + 0.01 * n,
            0.09,
            text,
            ha="left",
            va="bottom",
            fontsize=7.5,
            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1.5},
        )
    for start, end, result in data.races:
        ax.axvspan(start, max(end, start + 1), ymax=1 / YMAX, color=RACE, alpha=0.35, lw=0)
        late = start > 0.85 * n  # near the right edge the label ends at the band's end
        ax.text(
            max(end, start + 1) if late else start,
            0.985,
            f" race: {result} " if late else f" race: {result}",
            ha="right" if late else "left",
            va="top",
            fontsize=7,
            color=(0.15, 0.4, 0.1),
            clip_on=True,
        )
    ax.plot(range(len(data.rolling)), data.rolling, color="black", lw=1.1)
    for lv in data.levels:
        ax.hlines(lv.rate, lv.start, lv.end, colors="0.45", lw=2, alpha=0.8)
    seen: set[str] = set()
    for kind in DRAWN:
        xs = [m.index for m in data.markers if m.kind == kind]
        if not xs:
            continue
        colour = COLOURS[kind]
        if kind in ("swap", "rollback", "rejected", "refused"):
            for x in xs:
                ax.axvline(x, color=colour, lw=1, alpha=0.7, ls="-" if kind == "swap" else ":")
        if kind == "round":  # a thin boundary: each round's job went out here
            for m in (m for m in data.markers if m.kind == kind):
                ax.axvline(m.index, color=colour, lw=0.6, alpha=0.8, ls="-.")
                ax.text(m.index, LANES[kind] + 0.012, f" r{m.detail}", fontsize=6.5, color=colour)
        ax.scatter(xs, [LANES[kind]] * len(xs), marker=SYMBOLS[kind], color=colour, s=34, zorder=3)
        seen.add(kind)
    handles: list[Artist] = [
        Line2D([], [], color="black", lw=1.1, label=f"success, last {data.window} grasps")
    ]
    handles.append(Line2D([], [], color="0.45", lw=2, label="mean: change->swap, after swap"))
    handles += [
        Line2D([], [], color=COLOURS[k], marker=SYMBOLS[k], ls="", label=NAMES[k])
        for k in DRAWN
        if k in seen
    ]
    if data.races:
        handles.append(Patch(color=RACE, alpha=0.35, label="race: child vs parent"))
    fig.legend(handles=handles, loc="lower center", fontsize=8, ncol=5, frameon=False)
    ax.set_xlim(0, n)
    ax.set_ylim(0, YMAX)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.set_xlabel("grasp")
    ax.set_ylabel(f"grasp success (rolling, last {data.window})")
    ax.set_title(data.title, fontsize=10)
    if data.stopped:
        ax.text(
            0.5,
            0.55,
            data.stopped.upper(),
            transform=ax.transAxes,
            ha="center",
            color=(0.8, 0.0, 0.0),
            fontsize=11,
            weight="bold",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": (0.8, 0.0, 0.0)},
        )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    meta = {"Title": data.title, **data.metadata}
    if data.stopped:
        meta["Description"] = data.stopped
    fig.savefig(path, metadata=meta)
