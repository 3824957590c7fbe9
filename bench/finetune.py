"""Fine-tuning recovery per challenge: parent vs early-stopped child vs scratch, in the sim.

Usage: python -m bench.finetune [--grasps 25,50,100,200,400,800] [--challenges a,b,...]
                                [--eval-grasps 400] [--sweep 100,250,500,1000] [--quick]

For each challenge at its default severity: collect max(N) exploration grasps
with the base policy (training objects, 20% exploratory actions), fine-tune
the base policy on the first N of them (``trainer.finetune`` defaults: early
stopping, 50/50 batches with the base replay data; ``--gate strict`` by default,
the offline gate the committed table measures), and evaluate parent and
child on test objects through the daemon's serving path (ONNX Runtime + numpy
CEM 64/6/3 as configs/sim.toml serves, ``bench/policy_eval.py``) under the
challenge and on baseline; also "scratch" (same recipe, random init) at the
largest N. ``--sweep`` adds fixed step counts at the largest N (no early
stopping) to check the early-stopping choice. Every evaluation uses the same
bins (seeds) for parent and children. Work is kept under ``--out`` and reused
on a rerun. Progress on stderr; the last stdout line is one JSON object with
every figure, its N and Wilson 95% interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.bundle import validate_bundle
from bench.policy_eval import evaluate
from drivers.sim.conditions import CONDITION_NAMES
from trainer.basedata import DatasetSpec, collect_dataset
from trainer.dataset import EpisodeDataset, EpisodeWriter
from trainer.export import load_qnet, make_bundle
from trainer.finetune import FinetuneConfig, finetune
from trainer.qnet import QNet

ROOT = Path(__file__).resolve().parents[1]
CHALLENGES = [c for c in CONDITION_NAMES if c != "baseline"]
EVAL_SEED = 5000
CEM_ITERATIONS = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def subset(src: Path, n: int, dest: Path) -> Path:
    """The first ``n`` episodes of ``src`` as a dataset at ``dest`` (reused if complete)."""
    if (dest / "index.json").is_file() and EpisodeDataset.open(dest).num_episodes == n:
        return dest
    with EpisodeWriter(dest, chunk_transitions=4096) as w:
        for i, ep in enumerate(EpisodeDataset.open(src).episodes()):
            if i >= n:
                break
            w.append(ep)
    return dest


class Evaluator:
    """Cached evaluations (bundle, condition) -> policy_eval result."""

    def __init__(self, out: Path, grasps: int, seeds: int, workers: int) -> None:
        self.file = out / "evals.json"
        self.cache: dict[str, Any] = (
            json.loads(self.file.read_text()) if self.file.is_file() else {}
        )
        self.grasps, self.seeds, self.workers = grasps, seeds, workers

    def __call__(self, bundle: Path, condition: str) -> dict[str, Any]:
        bid = json.loads((bundle / "meta.json").read_text())["id"]
        key = f"{bid}:{condition}:{self.grasps}:{self.seeds}"
        if key not in self.cache:
            t0 = time.time()
            r = evaluate(
                bundle,
                condition,
                {},
                self.grasps,
                EVAL_SEED,
                self.seeds,
                self.workers,
                "test",
                cem_iterations=CEM_ITERATIONS,
            )
            self.cache[key] = {k: r[k] for k in ("bundle", "condition", "success", "n", "ci95")}
            self.file.write_text(json.dumps(self.cache, indent=1))
            log(f"eval {bid} {condition}: {r['success']:.1%} n={r['n']} ({time.time() - t0:.0f}s)")
        return dict(self.cache[key])


def unshifted(bundle: Path, job_dir: Path) -> Path:
    """A copy of ``bundle`` with its action shift removed (same weights)."""
    net = load_qnet(validate_bundle(bundle))
    plain = QNet(dataclasses.replace(net.config, action_shift_m=(0.0, 0.0)), spec=net.spec)
    plain.load_state_dict(net.state_dict())
    meta = {"condition": "unshifted-copy", "training": {"kind": "unshifted", "of": bundle.name}}
    return make_bundle(plain.eval(), meta, job_dir / "unshifted").path


def recovered(base: float, parent: float, child: float) -> float | None:
    """Share of the parent's drop from its baseline success that the child recovers."""
    drop = base - parent
    return round((child - parent) / drop, 3) if drop > 0 else None


def run_job(
    cfg: FinetuneConfig, parent: Path, new: Path, prior: Path, out: Path, label: str
) -> dict[str, Any]:
    t0 = time.time()
    last = [0.0]

    def progress(p: dict[str, Any]) -> None:
        if time.time() - last[0] > 20:
            last[0] = time.time()
            val = p.get("val") or {}
            log(
                f"{label}: {p['phase']} step {p['step']}/{p['max_steps']} loss {p['loss']:.3f}"
                f" val {val.get('score_new')} best {p['best_step']}"
            )

    res = finetune(cfg, parent, new, [prior], out, progress=progress, condition=label)
    tr = res.meta["training"]
    row = {
        "status": res.status,
        "bundle": res.bundle_id,
        "chosen_step": tr["chosen_step"],
        "steps_run": tr["steps_run"],
        "augment": tr["augment"],
        "augment_probe": tr["augment_probe"],
        "gain": res.meta["validation"]["gain"],
        "se": res.meta["validation"]["se"],
        "wall_s": round(time.time() - t0, 1),
        "path": str(res.bundle_path) if res.bundle_path else None,
        "snapshots": res.meta.get("snapshots", {}),
        "action_shift": tr.get("action_shift", {}),
    }
    log(f"{label}: {res.status} chosen {tr['chosen_step']} of {tr['steps_run']} ({row['wall_s']}s)")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--grasps", default="200,800", help="exploration grasps per fine-tune")
    ap.add_argument("--challenges", default=",".join(CHALLENGES))
    ap.add_argument("--eval-grasps", type=int, default=400, help="test grasps per evaluation")
    ap.add_argument("--eval-seeds", type=int, default=4, help="bins per evaluation")
    ap.add_argument("--base-grasps", type=int, default=4000, help="base replay data size")
    ap.add_argument("--sweep", default="", help="fixed step counts at the largest N")
    ap.add_argument("--sweep-challenges", default="", help="challenges swept (default: all)")
    ap.add_argument("--scratch-steps", type=int, default=600, help="fixed steps of scratch")
    ap.add_argument("--no-scratch", action="store_true", help="skip the scratch baseline")
    ap.add_argument("--max-steps", type=int, default=FinetuneConfig().max_steps)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each fine-tune")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-finetune")
    ap.add_argument("--parent", type=Path, default=ROOT / "policies" / "base")
    ap.add_argument(
        "--paper-recipe", action="store_true", help="no action-shift search (section IV-A only)"
    )
    ap.add_argument(
        "--augment",
        choices=["auto", "on", "off"],
        default=FinetuneConfig().augment,
        help="FinetuneConfig.augment of every fine-tune",
    )
    ap.add_argument("--eval-every", type=int, default=FinetuneConfig().eval_every)
    ap.add_argument("--patience", type=int, default=FinetuneConfig().patience)
    ap.add_argument(
        "--gate",
        default="strict",
        choices=("strict", "race"),
        help="FinetuneConfig.gate: strict (a child ships only when it beats the parent "
        "offline: what this table measures) or race (the agent's filter)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the test suite runs it)")
    args = ap.parse_args()
    cfg = FinetuneConfig(
        max_steps=args.max_steps,
        threads=args.threads,
        shift_search=not args.paper_recipe,
        augment=args.augment,
        eval_every=args.eval_every,
        patience=args.patience,
        gate=args.gate,
    )
    if args.quick:
        args.grasps, args.challenges, args.sweep = "24", "checkerboard", ""
        args.eval_grasps, args.eval_seeds, args.base_grasps = 12, 2, 40
        args.workers = 1  # evaluations in this process: no worker start-up
        args.scratch_steps = 8
        cfg = dataclasses.replace(
            cfg, max_steps=8, eval_every=4, probe_steps=4, batch_size=16, patience=1
        )
    ns = sorted(int(x) for x in args.grasps.split(","))
    challenges = [c for c in args.challenges.split(",") if c]
    for c in challenges:
        if c not in CHALLENGES:
            ap.error(f"unknown challenge {c!r}; choose from {CHALLENGES}")
    sweep = sorted(int(x) for x in args.sweep.split(",") if x)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(out, args.eval_grasps, args.eval_seeds, args.workers)
    t_start = time.time()
    log(f"base replay data: {args.base_grasps} grasps")
    base = out / f"base-{args.base_grasps}"
    base_counts = collect_dataset(
        DatasetSpec(bundle=args.parent, grasps=args.base_grasps, workers=args.workers, seed=7),
        base,
        progress=False,
    )
    parent_base = ev(args.parent, "baseline")
    result: dict[str, Any] = {
        "parent": json.loads((args.parent / "meta.json").read_text())["id"],
        "config": {
            "finetune": json.loads(json.dumps(dataclasses.asdict(cfg))),
            "grasps": ns,
            "eval_grasps": args.eval_grasps,
            "eval_seeds": args.eval_seeds,
            "cem_iterations": CEM_ITERATIONS,
            "base_data": base_counts,
            "sweep": sweep,
        },
        "parent_baseline": parent_base,
        "challenges": {},
    }
    for ch in challenges:
        log(f"== {ch}")
        explore = out / ch / f"explore-{ns[-1]}"
        ex_counts = collect_dataset(
            DatasetSpec(
                bundle=args.parent, grasps=ns[-1], condition=ch, workers=args.workers, seed=11
            ),
            explore,
            progress=False,
        )
        parent_ch = ev(args.parent, ch)
        row: dict[str, Any] = {"parent": parent_ch, "explore": ex_counts, "runs": {}}
        for n in ns:
            data = subset(explore, n, out / ch / f"new-{n}")
            job = run_job(cfg, args.parent, data, base, out / ch / f"ft-{n}", f"{ch} N={n}")
            child = Path(job["path"]) if job["path"] else args.parent
            job["challenge"] = ev(child, ch)
            job["baseline"] = ev(child, "baseline")
            if job["action_shift"].get("adopted"):
                # The child serves a moved gripper; its network with the shift removed tells
                # whether it forgot the stock robot.
                job["baseline_unshifted"] = ev(unshifted(child, out / ch / f"ft-{n}"), "baseline")
            job["recovered"] = recovered(
                parent_base["success"], parent_ch["success"], job["challenge"]["success"]
            )
            row["runs"][str(n)] = job
        result["challenges"][ch] = row
        log(f"{ch} done: {json.dumps(row)}")
        (out / "partial.json").write_text(json.dumps(result))
    sweep_chs = [c for c in args.sweep_challenges.split(",") if c] or challenges
    for ch in [c for c in challenges if c in sweep_chs] if sweep else []:
        data = out / ch / f"new-{ns[-1]}"
        sw = dataclasses.replace(
            cfg, max_steps=sweep[-1], patience=10**6, snapshot_steps=tuple(sweep)
        )
        job = run_job(sw, args.parent, data, base, out / ch / f"sweep-{ns[-1]}", f"{ch} sw")
        row = result["challenges"][ch]
        row["sweep"] = {
            s: {"challenge": ev(Path(p), ch)}
            for s, p in sorted(job["snapshots"].items(), key=lambda kv: int(kv[0]))
        }
        row["sweep_job"] = {k: job[k] for k in ("augment", "chosen_step", "gain")}
        log(f"{ch} sweep: {json.dumps(row['sweep'])}")
        (out / "partial.json").write_text(json.dumps(result))
    for ch in [] if args.no_scratch else challenges:
        data = out / ch / f"new-{ns[-1]}"
        # Scratch never passes the parent comparison (its early candidates fail the forgetting
        # rule), so it runs a fixed number of steps, as in the paper, and its last network is
        # evaluated.
        steps = args.scratch_steps
        sc = dataclasses.replace(
            cfg, init="scratch", max_steps=steps, patience=10**6, snapshot_steps=(steps,)
        )
        sdir = out / ch / f"scratch-{ns[-1]}-{steps}"
        job = run_job(sc, args.parent, data, base, sdir, f"{ch} S")
        job["challenge"] = ev(Path(job["snapshots"][str(steps)]), ch)
        result["challenges"][ch]["scratch"] = job
        log(f"{ch} scratch: {json.dumps(job)}")
        (out / "partial.json").write_text(json.dumps(result))
    result["wall_s"] = round(time.time() - t_start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
