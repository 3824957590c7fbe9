"""Command lines of the benches: a parser described by a docstring's first paragraph, and
plain flags declared by their defaults."""

from __future__ import annotations

import argparse


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose description is the first paragraph of ``doc``."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def flags(ap: argparse.ArgumentParser, **defaults: int | float | str) -> None:
    """Add ``--name`` (underscores written as dashes) for each keyword, typed as its default
    is: ``flags(ap, arl0=1000.0, seed=0)`` is ``--arl0`` (a float) and ``--seed`` (an int)."""
    for name, default in defaults.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
