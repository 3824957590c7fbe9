"""``robot-trainer``: command-line entry point of the trainer.

Subcommands:

- ``export-random --out DIR [--seed S]``: write a randomly initialised policy
  bundle under DIR (for daemon tests) and print its path and id as JSON.
- ``pretrain --out DIR [--ship DIR] [recipe overrides]``: run or resume the
  pre-training recipe of :mod:`trainer.pretrain`; with ``--ship`` the base
  bundle is also copied there (the repo ships ``policies/base``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from trainer.export import make_bundle
from trainer.qnet import QNet


def _export_random(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    net = QNet().eval()
    meta = {"condition": args.condition, "training": {"kind": "random-init", "seed": args.seed}}
    bundle = make_bundle(net, meta, Path(args.out), parent_id=None)
    print(json.dumps({"path": str(bundle.path), "id": bundle.id}))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import dataclasses
    import shutil

    from agent.bundle import validate_bundle
    from trainer.pretrain import PretrainConfig, pretrain

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(PretrainConfig)
        if getattr(args, f.name, None) is not None
    }
    cfg = PretrainConfig(**overrides)
    bundle = pretrain(cfg, Path(args.out))
    if args.ship:
        ship = Path(args.ship)
        if ship.exists():
            shutil.rmtree(ship)
        shutil.copytree(bundle.path, ship)
        validate_bundle(ship)
    print(json.dumps({"path": str(bundle.path), "id": bundle.id, "shipped": args.ship or None}))
    return 0


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
        pt.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=type(f.default),
            default=None,
            help=f"(default {f.default})",
        )
    pt.set_defaults(func=_pretrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
