"""Every console script on the robot-side install (no extras): one line naming the extra, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from plumbing.extras import EXTRA_MODULES, extra_of, missing_extras, missing_message

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
INVOCATIONS: dict[str, tuple[list[str], set[str]]] = {
    "robot-sim": (["bridge"], {"sim"}),
    "robot-agent": (["run", "--config", "configs/sim.toml"], {"sim"}),
    "robot-trainer": (["serve", "--config", "{tmp}/trainer.toml"], {"trainer"}),
    "robot-demo": (["--out", "{tmp}/demo"], {"sim", "trainer"}),
}
"""A command of each console script that needs extras, and the extras it must name."""


def _without_extras(
    tmp_path: Path, script: str, args: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run the console script's entry point where no extra's module can be imported."""
    hidden = [m for mods in EXTRA_MODULES.values() for m in mods]
    site = tmp_path / "site"
    site.mkdir()
    # None in sys.modules: find_spec says absent and import raises ModuleNotFoundError,
    # in this interpreter and in any child that inherits PYTHONPATH
    (site / "sitecustomize.py").write_text(
        f"import sys\nfor _m in {hidden!r}:\n    sys.modules[_m] = None\n"
    )
    module, _, func = SCRIPTS[script].partition(":")
    argv = [script, *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    prog = f"import sys\nsys.argv = {argv!r}\nfrom {module} import {func}\nsys.exit({func}())"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )


def test_every_console_script_has_a_missing_extra_case() -> None:
    assert set(INVOCATIONS) == set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_without_its_extra_names_it_and_exits_2(tmp_path: Path, script: str) -> None:
    args, extras = INVOCATIONS[script]
    res = _without_extras(tmp_path, script, args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    for extra in extras:
        assert f"[{extra}]" in res.stderr, res.stderr
    assert f"pip install '.[{','.join(sorted(extras))}]'" in res.stderr, res.stderr
    assert not (tmp_path / "demo").exists()  # the demo started nothing


def test_extras_modules_map_back_to_their_extra() -> None:
    assert extra_of("torch.nn") == "trainer" and extra_of("pybullet") == "sim"
    assert extra_of("numpy") is None
    assert missing_extras(["sim", "trainer"]) == []  # the test install has both
    msg = missing_message("x", [("sim", "pybullet")])
    assert msg.startswith("x needs the [sim] extra (pybullet)")
