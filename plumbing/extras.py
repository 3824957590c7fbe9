"""Optional extras of the package: how a console script says one is missing (exit 2).

The robot-side install (``pip install .`` without extras) ships every console script of
pyproject.toml; a script or command that needs an extra must end in one line naming the
extra and the pip command, exit status 2 (a usage error, like argparse's), never in a
ModuleNotFoundError traceback. Every entry point goes through :func:`run_entry`, so the
rule is written once: the extras a script always needs are looked for before anything
imports them (``importlib.util.find_spec``: nothing is imported), and a ModuleNotFoundError
of an extra's module raised later (a command that needs an extra the script does not
always need) becomes the same message.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable

EXIT_MISSING_EXTRA = 2
"""Exit status when an extra is not installed."""
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "sim": ("pybullet", "pybullet_data", "gymnasium"),
    "trainer": ("torch", "safetensors", "onnxscript"),
}
"""Top-level modules that only each extra of pyproject.toml installs."""


def extra_of(module: str) -> str | None:
    """The extra that installs top-level ``module`` (a dotted name counts by its top)."""
    top = module.partition(".")[0]
    return next((e for e, mods in EXTRA_MODULES.items() if top in mods), None)


def missing_extras(extras: Iterable[str]) -> list[tuple[str, str]]:
    """(extra, first missing module) for each of ``extras`` that is not installed."""
    out = []
    for extra in extras:
        missing = [m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None]
        if missing:
            out.append((extra, missing[0]))
    return out


def missing_message(who: str, missing: list[tuple[str, str]]) -> str:
    """One line: ``who`` needs the [x] extra (module), not installed here, and the pip command."""
    names = " and ".join(f"[{e}]" for e, _ in missing)
    modules = ", ".join(m for _, m in missing)
    plural = "s" if len(missing) > 1 else ""
    extras = ",".join(e for e, _ in missing)
    return (
        f"{who} needs the {names} extra{plural} ({modules}), not installed here: "
        f"pip install '.[{extras}]' from a checkout (or 'robot-continual[{extras}]')"
    )


def run_entry(program: str, run: Callable[[], int], needs: Iterable[str] = ()) -> int:
    """Run a console script's ``run`` if the extras it ``needs`` are installed.

    Returns ``run()``'s status, or prints :func:`missing_message` to stderr and returns
    :data:`EXIT_MISSING_EXTRA` when a needed extra is missing or ``run`` raises a
    ModuleNotFoundError for a module of any extra. Any other error propagates.
    """
    missing = missing_extras(needs)
    if not missing:
        try:
            return run()
        except ModuleNotFoundError as exc:
            extra = extra_of(exc.name or "")
            if extra is None:
                raise
            missing = [(extra, (exc.name or "").partition(".")[0])]
    print(missing_message(program, missing), file=sys.stderr)
    return EXIT_MISSING_EXTRA
