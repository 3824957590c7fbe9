"""Console entry point of ``robot-trainer`` that imports no torch itself.

The robot-side install (``pip install .`` without the ``[trainer]`` extra) still ships the
``robot-trainer`` command; there it says which extra is missing and exits 2 instead of
ending in a ModuleNotFoundError traceback (plumbing.extras, the rule of every console script).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from plumbing.extras import run_entry


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trainer.cli.main``, or explain the missing [trainer] extra (exit 2)."""

    # trainer.cli imports torch lazily (``serve`` installs its stop handler first), so the
    # extra is looked for before it is imported
    def run() -> int:
        from trainer.cli import main as cli_main

        return cli_main(argv)

    return run_entry("robot-trainer", run, needs=("trainer",))


if __name__ == "__main__":
    sys.exit(main())
