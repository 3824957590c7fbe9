"""robot-demo's options, exit statuses and command line (DemoOptions' field docstrings are
the --help texts)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from plumbing.config_loader import field_docs, from_options

EXIT_CODES = {
    0: "complete: the agent ran its whole schedule and the report was written",
    1: "stopped early: a child process (base data, trainer or agent) failed",
    2: "nothing started: an option, path or template is wrong",
    3: "stopped early: the time limit (--time-limit) was reached",
    130: "stopped early: interrupted (Ctrl-C or SIGTERM)",
}
"""robot-demo's exit statuses; every early stop also writes its report, saying so."""


@dataclass(frozen=True)
class DemoOptions:
    """One run of the demo (the CLI's flags; each field's docstring is its --help)."""

    out: Path = Path("runs/demo")
    """Run directory (everything the run writes goes here)."""
    schedule: str = "default"
    """The world's conditions in order: "default" (baseline -> harsh_lighting -> transparent
    -> checkerboard), "paper" (adds extend_gripper -> offset_gripper) or a comma-separated
    list of conditions (the first is the start), each NAME or NAME:key=value[:key=value...]
    to set its severity (e.g. harsh_lighting:light_azimuth_deg=200)."""
    baseline_grasps: int = 300
    """Grasps under the first condition (at least the detector's reference, 200)."""
    grasps_per_condition: int = 800
    """Grasps under each later condition (more than the exploration)."""
    exploration_grasps: int | None = None
    """Grasps the agent explores after an alarm (default: the agent template's, 400)."""
    base_grasps: int | None = None
    """Base replay grasps: default the shipped archive (--base-archive, 4,000 grasps, made in
    seconds) when it fits --bundle, else 4,000 collected; 0: none; N: collect N."""
    base_archive: Path = Path("policies/base-replay.npz")
    """The shipped base replay archive (robot-trainer base-data --write-archive makes one)."""
    time_limit_s: float = 60 * 60.0
    """Stop the run this long after the agent starts (base data not counted; 0: no limit);
    the report is still written and says the run stopped early (exit 3)."""
    summary_json: Path | None = None
    """Also write summary.json here."""
    agent_template: Path = Path("configs/demo-agent.toml")
    """The agent's config template."""
    trainer_template: Path = Path("configs/demo-trainer.toml")
    """The trainer's config template."""
    bundle: Path = Path("policies/base")
    """The policy the agent starts with (and the trainer's base bundle)."""
    window: int = 50
    """Grasps in the rolling success rate (terminal and PNG)."""
    agent_command: tuple[str, ...] = ()
    """The agent's command line before ``--config PATH`` (empty: ``python -m agent.cli run``)."""
    agent_nice: int = 10
    """Niceness of the agent process: the trainer gets the CPU first while a job trains, as
    it would on its own machine (0: equal shares)."""
    pause_while_training: bool = True
    """Pause the agent (robot-agent ctl pause) while a job is with the trainer: on two shared
    cores the trainer then gets them; a robot with its own trainer machine keeps grasping."""
    report_only: bool = False
    """Only (re)write the PNG and summary of the run already in ``out``."""


def _help(name: str) -> str:
    """A DemoOptions field's docstring, as --help text."""
    return " ".join(FIELD_HELP[name].split()).replace("%", "%%")


FIELD_HELP = field_docs(DemoOptions)
"""DemoOptions' field docstrings: the --help texts."""


def build_parser() -> argparse.ArgumentParser:
    d = DemoOptions()
    p = argparse.ArgumentParser(
        prog="robot-demo",
        description="The whole loop on the simulated cell: the world changes by itself, the "
        "agent detects each change, explores, has the trainer fine-tune its policy and swaps "
        "the child in. Live progress in the terminal; at the end a PNG and a summary under "
        "--out (docs/demo.md).",
        epilog="exit status: "
        + "; ".join(f"{k}: {v}" for k, v in EXIT_CODES.items()).replace("%", "%%"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=d.out, help=_help("out"))
    p.add_argument("--schedule", default=d.schedule, help=_help("schedule"))
    p.add_argument(
        "--baseline-grasps", type=int, default=d.baseline_grasps, help=_help("baseline_grasps")
    )
    p.add_argument(
        "--grasps-per-condition",
        type=int,
        default=d.grasps_per_condition,
        help=_help("grasps_per_condition"),
    )
    p.add_argument("--exploration-grasps", type=int, default=None, help=_help("exploration_grasps"))
    p.add_argument("--base-grasps", type=int, default=None, help=_help("base_grasps"))
    p.add_argument("--base-archive", type=Path, default=d.base_archive, help=_help("base_archive"))
    p.add_argument(
        "--time-limit",
        type=float,
        default=d.time_limit_s / 60,
        metavar="MIN",
        help=_help("time_limit_s") + " In minutes.",
    )
    p.add_argument("--summary-json", type=Path, default=None, help=_help("summary_json"))
    p.add_argument(
        "--agent-template", type=Path, default=d.agent_template, help=_help("agent_template")
    )
    p.add_argument(
        "--trainer-template", type=Path, default=d.trainer_template, help=_help("trainer_template")
    )
    p.add_argument("--bundle", type=Path, default=d.bundle, help=_help("bundle"))
    p.add_argument("--window", type=int, default=d.window, help=_help("window"))
    p.add_argument("--agent-nice", type=int, default=d.agent_nice, help=_help("agent_nice"))
    p.add_argument(
        "--no-pause-while-training",
        action="store_true",
        help="Keep the agent grasping while a job trains (by default it is paused: the agent "
        "and the trainer share the machine's cores).",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="Only redraw the PNG and summary of the run in --out (give the same schedule "
        "options as the run).",
    )
    return p


def options_from_args(a: argparse.Namespace) -> DemoOptions:
    """The options of a command line :func:`build_parser` parsed."""
    return from_options(
        DemoOptions,
        a,
        time_limit_s=a.time_limit * 60,
        pause_while_training=not a.no_pause_while_training,
    )
