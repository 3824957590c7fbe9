"""``robot-trainer``: command-line entry point of the trainer.

Subcommands:

- ``export-random --out DIR [--seed S]``: write a randomly initialised policy
  bundle under DIR (for daemon tests) and print its path and id as JSON.
"""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the CLI help)."""
    parser = argparse.ArgumentParser(prog="robot-trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export-random", help="write a randomly initialised policy bundle")
    p.add_argument("--out", required=True, help="directory to write the bundle under")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the initialisation")
    p.add_argument("--condition", default="baseline", help="condition name recorded in meta")
    p.set_defaults(func=_export_random)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
