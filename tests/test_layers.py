"""The import direction between the top-level packages, read from the source (no imports run).

plumbing <- agent <- drivers, and the trainer on top: the agent finds drivers by entry point
only, the shared plumbing imports none of the three, and no package-level cycle exists. The
support packages sit above them all: testkit (test and bench support) imports no tests and
no bench, the benches import no tests, and no product package imports any of the three.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("plumbing", "agent", "drivers", "trainer")
ALLOWED = {
    "plumbing": set(),
    "agent": {"plumbing"},
    "drivers": {"plumbing", "agent"},
    "trainer": {"plumbing", "agent", "drivers"},
}
"""What each package may import; the arrows never climb, so there is no cycle."""
SUPPORT = ("testkit", "bench", "tests")
"""Not installed (pyproject ``packages.find``): what only the tests and the benches import."""
SUPPORT_ALLOWED = {"testkit": set(PACKAGES), "bench": {*PACKAGES, "testkit"}}
DETOURS = {"import_module", "__import__", "find_spec"}
OBJECT_REF = re.compile(r"[a-z_]\w*(\.\w+)+:\w+")


def _imports(path: Path) -> set[str]:
    """Top-level project packages imported anywhere in ``path`` (function bodies too), also
    by detour: a string given to ``import_module``/``__import__``/``find_spec``, or written
    as an object reference ``"package.module:name"``."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.partition(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in DETOURS and isinstance(node.args[0].value, str):
                out.add(node.args[0].value.partition(".")[0])
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and OBJECT_REF.fullmatch(node.value)
        ):
            out.add(node.value.partition(".")[0])
    return out & set(PACKAGES + SUPPORT)


def test_each_package_imports_only_the_layers_below_it() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        for pkg in PACKAGES
        for path in sorted((ROOT / pkg).rglob("*.py"))
        if (bad := _imports(path) - ALLOWED[pkg] - {pkg})
    ]
    assert wrong == []


def test_the_support_packages_stay_out_of_the_product_and_off_the_tests() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        for pkg, allowed in [*ALLOWED.items(), *SUPPORT_ALLOWED.items()]
        for path in sorted((ROOT / pkg).rglob("*.py"))
        if (bad := _imports(path) & set(SUPPORT) - allowed - {pkg})
    ]
    assert wrong == []


def test_the_allowed_arrows_have_no_cycle() -> None:
    order: list[str] = []
    while len(order) < len(PACKAGES):
        ready = [p for p in PACKAGES if p not in order and ALLOWED[p] <= set(order)]
        assert ready, f"cycle among {sorted(set(PACKAGES) - set(order))}"
        order += ready
    assert order == ["plumbing", "agent", "drivers", "trainer"]


def test_an_import_by_string_counts_as_an_import(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import importlib\n"
        "def f():\n"
        "    from trainer import jobs\n"
        "    return importlib.import_module('drivers.sim'), 'plumbing.curve:Security'\n"
        "KEY = 'agent.endpoint'  # a config key, not a module\n"
    )
    assert _imports(src) == {"trainer", "drivers", "plumbing"}


MAX_MODULE_LINES = 450
"""A module with one job fits on a few screens; the daemon keeps only the loop and wiring."""
MAX_DAEMON_LINES = 400


def test_no_product_module_outgrows_its_one_job() -> None:
    sizes = {
        p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
    }
    assert sizes, "no modules found"
    over = {f: n for f, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"split these modules (over {MAX_MODULE_LINES} lines): {over}"
    assert sizes["agent/daemon.py"] <= MAX_DAEMON_LINES, sizes["agent/daemon.py"]
