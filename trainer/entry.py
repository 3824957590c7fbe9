"""Console entry point of ``robot-trainer`` that imports no torch itself.

The robot-side install (``pip install .`` without the ``[trainer]`` extra) still ships the
``robot-trainer`` command; there it says which extra is missing and exits 2 instead of
ending in a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

EXIT_MISSING_EXTRA = 2
"""Exit status when the [trainer] extra is not installed (a usage error, like argparse's)."""
TRAINER_EXTRA_MODULES = frozenset({"torch", "safetensors", "onnxscript"})
"""Top-level modules that only the [trainer] extra installs."""
MISSING_EXTRA_MESSAGE = (
    "robot-trainer needs the [trainer] extra (torch): pip install '.[trainer]' "
    "(missing module: {name})"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trainer.cli.main``, or explain the missing [trainer] extra (exit 2)."""
    # trainer.cli imports torch lazily (``serve`` installs its stop handler first), so the
    # extra is looked for here without importing it
    if importlib.util.find_spec("torch") is None:
        print(MISSING_EXTRA_MESSAGE.format(name="torch"), file=sys.stderr)
        return EXIT_MISSING_EXTRA
    try:
        from trainer.cli import main as cli_main

        return cli_main(argv)
    except ModuleNotFoundError as exc:
        name = (exc.name or "").partition(".")[0]
        if name not in TRAINER_EXTRA_MODULES:
            raise
        print(MISSING_EXTRA_MESSAGE.format(name=name), file=sys.stderr)
        return EXIT_MISSING_EXTRA


if __name__ == "__main__":
    sys.exit(main())
