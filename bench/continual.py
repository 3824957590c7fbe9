"""Recovery of the whole loop after a change: the agent learning on the sim, one challenge at a
time, with rounds and with one-shot learning side by side on the same seeds.

Usage: python -m bench.continual [--challenges a,b] [--modes rounds,oneshot] [--after 3200]
           [--baseline-grasps 300] [--exploration-grasps N] [--seed S] [--eval-grasps 400]
           [--eval-seeds 4] [--eval-seed E] [--workers 2] [--runs-at-once 1]
           [--time-limit MIN] [--quick] [--out runs/continual]

``--seed`` is the sim's seed in every loop (and the fine-tune's), the same for every mode;
``--exploration-grasps`` 0 keeps the template's (400); ``--eval-seed`` 0 means 1000 + 100 *
seed (the evaluations' first bin seed, the same for every policy); ``--workers`` is
policy_eval's processes; ``--runs-at-once`` runs a challenge's modes side by side (1 on the
2-core machine: the demo pauses the agent while the trainer trains); ``--time-limit`` stops a
loop after MIN minutes (0: none).

For each challenge at its default severity, from the shipped base policy (policies/base),
the real loop runs as ``robot-demo`` runs it (trainer/demo: the trainer service and the
agent as processes, the world's schedule ``baseline,CHALLENGE``): the world changes at grasp
``--baseline-grasps`` by itself and the agent runs ``--after`` grasps after the change. Each
mode is a set of overrides of the agent template (configs/demo-agent.toml) and of the
trainer's gate: ``oneshot`` is the agent before rounds (``[rounds]`` and the race off, the
strict offline gate), ``rounds`` races children and learns in rounds. An override the
agent's config does not know (a section or key missing from ``agent.config.AgentConfig``)
is left out with a warning.

From each run's grasp log (read-only) it takes the policy served at 400, 800, 1,600 and
3,200 grasps since the change (scaled down for a shorter ``--after``), the first child and
the final policy, and re-evaluates each distinct one with bench/policy_eval.py on the
challenge (test objects, ``--eval-grasps`` over ``--eval-seeds`` seeds, Wilson 95%), and
the base policy on baseline and on the challenge: recovery = (served - base on the
challenge) / (base on baseline - base on the challenge), with a bootstrap 95% interval
(bench/continual_log.py). Also per run: rounds (fine-tune jobs after the change), race cost
(grasps under arms that ended eliminated, from the agent's race events; null without races)
and wall time.

Writes ``--out``/CHALLENGE-MODE/ (each a robot-demo run directory), ``continual.json`` and
``continual.png`` (recovery against grasps since the change, a panel per challenge), both
rewritten after each challenge; progress on stderr; the last line of stdout is the JSON.
``--quick``: checkerboard only, 200 + 160 grasps, a 40-grasp exploration, a tiny fine-tune
and 32-grasp evaluations in this process (the test tier's smoke run; its figures mean
little).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import sys
import threading
import time
import tomllib
import typing
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from agent.config import AgentConfig
from bench import continual_log as cl
from bench.continual_plot import write_png
from bench.flags import flags, parser
from bench.policy_eval import evaluate
from trainer.demo.logread import read_run
from trainer.demo.options import DemoOptions
from trainer.demo.run import Demo
from trainer.demo.setup import dumps_toml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "policies" / "base"
CHALLENGES = ("harsh_lighting", "transparent", "checkerboard", "extend_gripper", "offset_gripper")
"""The paper's five challenges (drivers/sim/conditions.py), each at its default severity."""
MODES: dict[str, dict[str, dict[str, Any]]] = {
    "oneshot": {"rounds": {"enabled": False, "race": False}},
    "rounds": {"rounds": {"enabled": True, "race": True}},
}
"""Agent-config overrides per mode, applied to the agent template: ``oneshot`` is the agent
before rounds (one job per change, the child on probation)..."""
TRAINER_MODES: dict[str, dict[str, Any]] = {
    "oneshot": {"gate": "strict"},
    "rounds": {"gate": "race"},
}
"""...with the trainer's strict offline gate; ``rounds`` races children the filter-gate
passes (outside --quick, whose recipe ships any child in both modes)."""
QUICK_FINETUNE = {
    "max_steps": 40,
    "eval_every": 10,
    "patience": 2,
    "max_eval": 128,
    "batch_size": 64,
    "probe_steps": 0,
    "shift_search": False,
    "checkpoint_every": 20,
    "min_gain": -1.0,
    "se_margin": 1000.0,
    "prior_tolerance": 1.0,
    "min_auc": 0.0,
    "gate": "race",
    "race_min_auc": 0.0,
}
"""--quick: a fine-tune of seconds (the trainer template's knobs, trainer/finetune/config.py)
whose gate passes any child, so the smoke run always has a child to evaluate."""


_CEM_DEFAULTS = {"samples": 64, "iterations": 2, "init_std": 0.5}
"""policy_eval's CEM, where the agent template sets none (agent.cem.CemParams' defaults)."""


def known_keys() -> dict[str, set[str]]:
    """The agent config's sections and each one's keys, as ``agent.config`` declares them."""
    hints = typing.get_type_hints(AgentConfig)
    out: dict[str, set[str]] = {}
    for f in dataclasses.fields(AgentConfig):
        t = hints[f.name]
        out[f.name] = (
            {g.name for g in dataclasses.fields(t)} if dataclasses.is_dataclass(t) else set()
        )
    return out


def apply_overrides(
    template: Mapping[str, Any],
    overrides: Mapping[str, Mapping[str, Any]],
    known: Mapping[str, set[str]],
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The template with the overrides the agent's config knows; returns (config, applied,
    skipped) with each override as ``section.key``. A section or key the config does not
    declare is skipped: the agent refuses unknown keys."""
    cfg = {k: dict(v) if isinstance(v, Mapping) else v for k, v in template.items()}
    applied: list[str] = []
    skipped: list[str] = []
    for section, values in overrides.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if section in known and key in known[section]:
                cfg.setdefault(section, {})[key] = value
                applied.append(name)
            else:
                skipped.append(name)
    return cfg, applied, skipped


class Prefixed(io.TextIOBase):
    """A text stream that writes each line to stderr with a tag and to a log file (the demo's
    console: event lines, and its status line every 5 s)."""

    lock = threading.Lock()

    def __init__(self, tag: str, log: Path) -> None:
        self.tag = tag
        self.log = open(log, "a")  # noqa: SIM115 (closed by close())
        self.buf = ""

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        self.log.write(s)
        self.buf += s.replace("\r", "\n")
        *lines, self.buf = self.buf.split("\n")
        with self.lock:
            for line in lines:
                if line.strip():
                    print(f"[{self.tag}] {line}", file=sys.stderr, flush=True)
        return len(s)

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        super().close()  # flushes first
        self.log.close()


def load_toml(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def write_templates(
    a: Any, run: Path, mode: str, known: Mapping[str, set[str]]
) -> tuple[Path, Path, list[str], list[str]]:
    """The run's agent and trainer templates (the demo's, with the seed and the mode's
    overrides); returns their paths and the overrides applied and skipped."""
    agent = load_toml(ROOT / "configs" / "demo-agent.toml")
    agent.setdefault("driver", {})["seed"] = a.seed
    agent, applied, skipped = apply_overrides(agent, MODES[mode], known)
    trainer = load_toml(ROOT / "configs" / "demo-trainer.toml")
    ft = trainer.setdefault("finetune", {})
    ft["seed"] = a.seed
    ft.update(QUICK_FINETUNE if a.quick else TRAINER_MODES[mode])
    run.mkdir(parents=True, exist_ok=True)
    a_path, t_path = run / "agent-template.toml", run / "trainer-template.toml"
    a_path.write_text(f"# bench/continual, mode {mode}\n" + dumps_toml(agent))
    t_path.write_text("# bench/continual\n" + dumps_toml(trainer))
    return a_path, t_path, applied, skipped


class Bench:
    """One bench run: loops, evaluations, the JSON and the PNG."""

    def __init__(self, a: Any) -> None:
        self.a = a
        self.out = Path(a.out)
        self.known = known_keys()
        self.evals: dict[tuple[str, str], dict[str, Any]] = {}
        self.demos: list[Demo] = []
        self.stop = threading.Event()
        """Set by SIGINT/SIGTERM: the running loops stop (their reports are written), no
        new loop starts."""
        self.base_id = str(json.loads((BASE / "meta.json").read_text())["id"])
        self.t0 = time.monotonic()
        template = load_toml(ROOT / "configs" / "demo-agent.toml").get("cem", {})
        self.cem = {k: template.get(k, v) for k, v in _CEM_DEFAULTS.items()}
        """The CEM the evaluations use: the agent template's, as the agent serves."""

    def say(self, text: str) -> None:
        print(f"[continual {time.monotonic() - self.t0:6.0f}s] {text}", file=sys.stderr, flush=True)

    def loop(self, challenge: str, mode: str) -> dict[str, Any]:
        """One robot-demo run of the challenge in the mode; returns its log-derived figures."""
        a = self.a
        run = self.out / f"{challenge}-{mode}"
        a_tpl, t_tpl, applied, skipped = write_templates(a, run, mode, self.known)
        shared, mine = self.out / "base-data", run / "base-data"
        if a.runs_at_once == 1 and not mine.exists() and not mine.is_symlink():
            # one unpacked copy of the base replay data for every run (the demo reuses a
            # complete one; runs at once would unpack into it together)
            mine.symlink_to(shared.resolve(), target_is_directory=True)
        for name in skipped:
            self.say(f"warning: {challenge}/{mode}: the agent's config has no {name}: left out")
        opts = DemoOptions(
            out=run,
            schedule=f"baseline,{challenge}",
            baseline_grasps=a.baseline_grasps,
            grasps_per_condition=a.after,
            exploration_grasps=a.exploration_grasps or None,
            time_limit_s=a.time_limit * 60,
            agent_template=a_tpl,
            trainer_template=t_tpl,
            bundle=BASE,
        )
        stream = Prefixed(f"{challenge}/{mode}", run / "bench.log")
        t0 = time.monotonic()
        try:
            demo = Demo(opts, stream=typing.cast(typing.IO[str], stream))
            self.demos.append(demo)
            if self.stop.is_set():
                demo.stop.set()
            status = demo.run()
        finally:
            stream.close()
        wall = time.monotonic() - t0
        self.say(f"{challenge}/{mode}: loop done in {wall:.0f} s (exit {status})")
        summary = run / "summary.json"
        complete = json.loads(summary.read_text()).get("complete") if summary.is_file() else False
        return {
            "run": str(run),
            "exit_status": status,
            "complete": complete,
            "wall_s": round(wall, 1),
            "overrides": {"applied": applied, "skipped": skipped},
            **self.read_log(run / "agent" / "grasps.db"),
        }

    def read_log(self, db: Path) -> dict[str, Any]:
        """Served policies, rounds and races of a run (the log opened read-only)."""
        import sqlite3

        if not db.is_file():
            return {"grasps": 0, "served": {}, "paths": {}}
        grasps, events = read_run(db)
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            jobs = [
                {"created_at": t, "status": s}
                for t, s in conn.execute("SELECT created_at, status FROM jobs ORDER BY id")
            ]
            paths = dict(conn.execute("SELECT id, path FROM policies").fetchall())
        finally:
            conn.close()
        change = self.a.baseline_grasps
        served = {
            str(c): cl.served_at(grasps, events, change + c, self.base_id) for c in self.checkpoints
        }
        race = cl.race_cost(events)
        statuses = cl.rounds(jobs, grasps, change)
        return {
            "grasps": len(grasps),
            "alarms_before_change": cl.alarms_before(grasps, events, change),
            "rounds": len(statuses),
            "jobs": statuses,
            "race_cost": race.cost,
            "races": race.races,
            "race_events": race.events,
            "served": served,
            "first_child": cl.first_child(grasps, events, change, self.base_id),
            "final": cl.served_at(grasps, events, len(grasps), self.base_id) if grasps else None,
            "paths": paths,
        }

    def rate(self, policy: str, bundle: Path, condition: str) -> dict[str, Any]:
        """policy_eval of one policy on one condition (each pair once per bench run)."""
        key = (policy, condition)
        if key not in self.evals:
            a = self.a
            self.say(f"evaluating {policy} on {condition} ({a.eval_grasps} grasps)")
            res = evaluate(
                bundle,
                condition,
                {},
                a.eval_grasps,
                a.eval_seed,
                a.eval_seeds,
                a.workers,
                cem_samples=int(self.cem["samples"]),
                cem_iterations=int(self.cem["iterations"]),
                cem_init_std=float(self.cem["init_std"]),
            )
            keep = ("bundle", "success", "n", "ci95", "cem", "seeds")
            self.evals[key] = {k: res[k] for k in keep}
        return self.evals[key]

    def judged(
        self,
        pol: str | None,
        paths: Mapping[str, str],
        challenge: str,
        base_bl: cl.Rate,
        base_ch: cl.Rate,
    ) -> dict[str, Any] | None:
        """A served policy's success under the challenge and the share of the drop it
        recovered (None for no policy: the run stopped before the checkpoint)."""
        if pol is None:
            return None
        bundle = BASE if pol == self.base_id else Path(paths[pol])
        fig = self.rate(pol, bundle, challenge)
        rec, ci = cl.recovery(cl.Rate.of(fig), base_ch, base_bl, seed=self.a.seed)
        return {
            "policy": pol,
            "success": _brief(fig),
            "recovery": None if rec is None else round(rec, 4),
            "recovery_ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)],
        }

    def figures(self, challenge: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The challenge's row: base levels, and per mode the recovery at each checkpoint."""
        base_bl = self.rate(self.base_id, BASE, "baseline")
        base_ch = self.rate(self.base_id, BASE, challenge)
        rb, rc = cl.Rate.of(base_bl), cl.Rate.of(base_ch)
        row: dict[str, Any] = {
            "base_challenge": _brief(base_ch),
            "drop": round(rb.p - rc.p, 4),
            "modes": {},
        }
        for mode, run in runs.items():
            paths = run.pop("paths", {})
            points = []
            for c in self.checkpoints:
                j = self.judged(run["served"].get(str(c)), paths, challenge, rb, rc)
                points.append({"since_change": c, **(j or {"policy": None, "recovery": None})})
            first = self.judged(run["first_child"], paths, challenge, rb, rc)
            final = self.judged(run["final"], paths, challenge, rb, rc)
            worse = None
            if first and final:
                worse = final["success"]["success"] < first["success"]["success"]
            row["modes"][mode] = {
                **{k: v for k, v in run.items() if k != "served"},
                "checkpoints": points,
                "first_child": first,
                "final": final,
                "final_worse_than_first_child": worse,
            }
        return row

    def run(self) -> dict[str, Any]:
        a = self.a
        self.out.mkdir(parents=True, exist_ok=True)
        self.checkpoints = cl.checkpoints_for(a.after)
        modes = [m.strip() for m in a.modes.split(",") if m.strip()]
        result: dict[str, Any] = {
            "bench": "continual",
            "quick": a.quick,
            "seed": a.seed,
            "baseline_grasps": a.baseline_grasps,
            "after": a.after,
            "checkpoints": self.checkpoints,
            "modes": {m: MODES[m] for m in modes},
            "eval": {
                "grasps": a.eval_grasps,
                "seeds": a.eval_seeds,
                "seed": a.eval_seed,
                "cem": self.cem,
            },
            "challenges": {},
        }
        for challenge in [c.strip() for c in a.challenges.split(",") if c.strip()]:
            if self.stop.is_set():
                break
            self.say(f"{challenge}: modes {', '.join(modes)}")
            with ThreadPoolExecutor(max(1, a.runs_at_once)) as pool:
                done = list(pool.map(lambda m: self.loop(challenge, m), modes))  # noqa: B023
            row = self.figures(challenge, dict(zip(modes, done, strict=True)))
            result["challenges"][challenge] = row
            result["base_baseline"] = _brief(self.rate(self.base_id, BASE, "baseline"))
            result["wall_s"] = round(time.monotonic() - self.t0, 1)
            self.write(result)
        return result

    def write(self, result: dict[str, Any]) -> None:
        result["json"] = str(self.out / "continual.json")
        result["png"] = str(self.out / "continual.png")
        (self.out / "continual.json").write_text(json.dumps(result, indent=1))
        write_png(result, self.out / "continual.png")


def _brief(fig: Mapping[str, Any]) -> dict[str, Any]:
    return {"success": fig["success"], "n": fig["n"], "ci95": fig["ci95"]}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--challenges", default=",".join(CHALLENGES))
    ap.add_argument("--modes", default="rounds,oneshot", help=f"of {', '.join(MODES)}")
    ap.add_argument("--out", type=Path, default=Path("runs/continual"))
    ap.add_argument("--quick", action="store_true", help="the test tier's smoke run")
    flags(
        ap,
        after=3200,
        baseline_grasps=300,
        exploration_grasps=0,
        seed=0,
        eval_grasps=400,
        eval_seeds=4,
        eval_seed=0,
        workers=min(2, os.cpu_count() or 1),
        runs_at_once=1,
        time_limit=0.0,
    )
    a = ap.parse_args()
    if a.quick:
        a.challenges, a.after, a.baseline_grasps = "checkerboard", 160, 200
        a.exploration_grasps, a.eval_grasps, a.eval_seeds, a.workers = 40, 32, 2, 1
        a.time_limit = a.time_limit or 5.0
    a.eval_seed = a.eval_seed or 1000 + 100 * a.seed
    for m in a.modes.split(","):
        if m.strip() and m.strip() not in MODES:
            ap.error(f"--modes: unknown mode {m!r}; allowed: {', '.join(MODES)}")
    for c in a.challenges.split(","):
        if c.strip() and c.strip() not in CHALLENGES:
            ap.error(f"--challenges: unknown challenge {c!r}; allowed: {', '.join(CHALLENGES)}")
    if a.baseline_grasps < 200:
        ap.error("--baseline-grasps: the detector needs its 200-grasp reference first")
    bench = Bench(a)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        bench.stop.set()
        for demo in bench.demos:
            demo.stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    result = bench.run()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
