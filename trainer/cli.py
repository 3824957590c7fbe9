"""``robot-trainer``: command-line entry point of the trainer.

Subcommands:

- ``export-random --out DIR [--seed S]``: write a randomly initialised policy
  bundle under DIR (for daemon tests) and print its path and id as JSON.
- ``pretrain --out DIR [--ship DIR] [recipe overrides]``: run or resume the
  pre-training recipe of :mod:`trainer.pretrain`; with ``--ship`` the base
  bundle is also copied there (the repo ships ``policies/base``).
- ``finetune --parent BUNDLE --new DATA [--prior DATA ...] --out DIR
  [--init scratch] [--max-steps N] ...``: :func:`trainer.finetune.finetune`;
  prints the result as one JSON object on stdout, progress lines on stderr.
- ``base-data --out DIR [--grasps N]``: base replay data (base policy,
  baseline, training objects) in the episode format.
- ``serve [--config trainer.toml]``: the fine-tune job service for agents
  (:mod:`trainer.service`, protocol in docs/trainer-service.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from plumbing.config_loader import from_options

# torch (seconds to import) is imported by the parser and the subcommands, not here: for
# ``serve`` the stop handler comes first, so a SIGTERM during start-up stops it cleanly
# instead of killing it.


def _limit_threads() -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))


def _export_random(args: argparse.Namespace) -> int:
    import torch

    from trainer.export import make_bundle
    from trainer.qnet import QNet

    torch.manual_seed(args.seed)
    net = QNet().eval()
    meta = {"condition": args.condition, "training": {"kind": "random-init", "seed": args.seed}}
    bundle = make_bundle(net, meta, Path(args.out), parent_id=None)
    print(json.dumps({"path": str(bundle.path), "id": bundle.id}))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import shutil

    from agent.bundle import validate_bundle
    from trainer.pretrain import PretrainConfig, pretrain

    cfg = from_options(PretrainConfig, args)
    bundle = pretrain(cfg, Path(args.out))
    if args.ship:
        ship = Path(args.ship)
        if ship.exists():
            shutil.rmtree(ship)
        shutil.copytree(bundle.path, ship)
        validate_bundle(ship)
    print(json.dumps({"path": str(bundle.path), "id": bundle.id, "shipped": args.ship or None}))
    return 0


def _flag(text: str) -> bool:
    """A boolean option value: 1/true/yes/on or 0/false/no/off."""
    low = text.lower()
    if low not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")
    return low in ("1", "true", "yes", "on")


def _finetune(args: argparse.Namespace) -> int:
    import threading

    from trainer.finetune import FinetuneConfig, finetune

    cfg = from_options(FinetuneConfig, args)

    def progress(p: dict[str, object]) -> None:
        val = p.get("val")
        line = {"phase": p["phase"], "step": p["step"], "loss": p["loss"], "best": p["best_step"]}
        if isinstance(val, dict) and val.get("step") == p["step"]:
            line["new"] = val.get("new")
            line["prior"] = val.get("prior")
        print(json.dumps(line), file=sys.stderr, flush=True)

    res = finetune(
        cfg,
        Path(args.parent),
        [Path(p) for p in args.new],
        [Path(p) for p in args.prior],
        Path(args.out),
        progress=progress,
        stop=threading.Event(),
        job_id=args.job_id,
        condition=args.condition,
    )
    print(json.dumps(res.to_json()))
    return 0


def _base_data(args: argparse.Namespace) -> int:
    from trainer.basedata import DatasetSpec, collect_dataset
    from trainer.replay_archive import dataset_from_archive, write_archive

    out = Path(args.out)
    if args.from_archive:
        print(f"unpacking {args.from_archive} into {out}", file=sys.stderr, flush=True)
        counts = dataset_from_archive(Path(args.from_archive), out)
        (out / "collect.json").write_text(json.dumps(counts, indent=2))
        print(json.dumps(counts))
        return 0
    spec = DatasetSpec(
        bundle=Path(args.bundle), grasps=args.grasps, seed=args.seed, workers=args.workers
    )
    counts = collect_dataset(spec, out)
    if args.write_archive:
        keep = ("policy_id", "condition", "epsilon", "seed")
        meta = write_archive(out, Path(args.write_archive), {k: counts[k] for k in keep})
        print(f"wrote {args.write_archive} ({meta['grasps']} grasps)", file=sys.stderr)
    print(json.dumps(counts))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from plumbing.signals import StopSignals

    # installed by main() before anything slow (torch, the runner): a SIGTERM during
    # start-up makes the service stop before READY=1 and exit 0, as a SIGTERM later does
    signals: StopSignals = getattr(args, "stop_signals", None) or StopSignals().install()
    import logging

    from plumbing.config_loader import ConfigError
    from trainer.service import serve
    from trainer.service_config import load_service_config, service_config_from_dict

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raw_overrides = {"endpoint": args.endpoint, "data_dir": args.data_dir}
    overrides = {k: v for k, v in raw_overrides.items() if v is not None}
    try:
        cfg = load_service_config(args.config) if args.config else service_config_from_dict({})
        if overrides:
            raw = {"service": {**dataclasses.asdict(cfg.service), **overrides}}
            cfg = service_config_from_dict({**raw, "finetune": cfg.finetune})
        _limit_threads()
        return serve(cfg, stop=signals.event)
    except ConfigError as exc:
        print(f"robot-trainer serve: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the CLI help)."""
    parser = argparse.ArgumentParser(prog="robot-trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export-random", help="write a randomly initialised policy bundle")
    p.add_argument("--out", required=True, help="directory to write the bundle under")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the initialisation")
    p.add_argument("--condition", default="baseline", help="condition name recorded in meta")
    p.set_defaults(func=_export_random)
    from trainer.pretrain import PretrainConfig

    pt = sub.add_parser("pretrain", help="pre-train the base policy in the sim cell (resumable)")
    pt.add_argument("--out", required=True, help="run directory (state, data, checkpoints)")
    pt.add_argument("--ship", default="", help="also copy the final bundle to this directory")
    for f in dataclasses.fields(PretrainConfig):
        if not isinstance(f.default, (int, float, str)):
            continue
        pt.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=type(f.default),
            default=None,
            help=f"(default {f.default})",
        )
    pt.set_defaults(func=_pretrain)
    from trainer.basedata import DEFAULT_BASE_GRASPS
    from trainer.finetune import FinetuneConfig

    ft = sub.add_parser("finetune", help="fine-tune a bundle on a new condition (resumable)")
    ft.add_argument("--parent", required=True, help="parent bundle directory")
    ft.add_argument("--new", required=True, action="append", help="new-condition dataset (repeat)")
    ft.add_argument("--prior", action="append", default=[], help="prior dataset (repeat)")
    ft.add_argument("--out", required=True, help="job directory (checkpoints, result, bundle)")
    ft.add_argument("--job-id", default=None, help="job id recorded in the child's meta")
    ft.add_argument("--condition", default="", help="condition label recorded in the child's meta")
    for f in dataclasses.fields(FinetuneConfig):
        if not isinstance(f.default, (int, float, str)) or f.name in ("condition",):
            continue
        ft.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_flag if isinstance(f.default, bool) else type(f.default),
            default=None,
            help=f"(default {f.default})",
        )
    ft.set_defaults(func=_finetune)
    bd = sub.add_parser("base-data", help="collect base replay data with the base policy")
    bd.add_argument("--out", required=True, help="episode dataset directory to write")
    bd.add_argument("--grasps", type=int, default=DEFAULT_BASE_GRASPS, help="grasps to collect")
    bd.add_argument("--bundle", default="policies/base", help="policy bundle collecting them")
    bd.add_argument("--seed", type=int, default=7, help="collection seed")
    bd.add_argument("--workers", type=int, default=2, help="collection processes")
    bd.add_argument(
        "--from-archive",
        default="",
        help="make the dataset from this compressed archive (e.g. policies/base-replay.npz) "
        "instead of collecting",
    )
    bd.add_argument(
        "--write-archive",
        default="",
        help="also write the collected dataset as a compressed archive here",
    )
    bd.set_defaults(func=_base_data)
    sv = sub.add_parser("serve", help="run the fine-tune job service (docs/trainer-service.md)")
    sv.add_argument("--config", default="", help="TOML file ([service], [finetune] tables)")
    sv.add_argument("--endpoint", default=None, help="override service.endpoint")
    sv.add_argument("--data-dir", default=None, help="override service.data_dir")
    sv.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    signals = None
    if words[:1] == ["serve"]:  # before the parser: it imports the recipes, hence torch
        from plumbing.signals import StopSignals

        signals = StopSignals().install()
    args = build_parser().parse_args(words)
    if args.func is _serve:
        args.stop_signals = signals  # serve limits torch's threads after its handler is in
    else:
        _limit_threads()
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
