"""The systemd units, their install script and the service entry points.

The units are checked by systemd's own tools: ``systemd-analyze verify`` (on a copy whose
ExecStart points into this test venv, so the binaries resolve) and ``systemd-analyze security
--offline=yes`` (overall exposure <= 3.0). The README's test command installs them (the Debian
package ``systemd``) when they are missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.config import load_config
from trainer.service_config import load_service_config

ROOT = Path(__file__).resolve().parents[1]
UNITS = ("robot-agent", "robot-trainer")
INSTALLED_BIN = "/opt/robot-continual/venv/bin"
"""Where install.sh puts the console scripts (the units' ExecStart directory)."""
MAX_EXPOSURE = 3.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, (
        f"{name} is not on PATH: install the Debian package 'systemd' (README test command)"
    )
    return path


def _unit_text(name: str) -> str:
    return (ROOT / "systemd" / f"{name}.service").read_text()


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _local_copy(name: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's console scripts."""
    text = _unit_text(name)
    assert INSTALLED_BIN in text
    unit = tmp_path / f"{name}.service"
    unit.write_text(text.replace(INSTALLED_BIN, str(Path(sys.executable).parent)))
    return unit


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    unit = _local_copy(name, tmp_path)
    res = subprocess.run(
        [_tool("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # verify reports unknown keys, bad values and missing binaries as lines naming the unit
    assert f"{name}.service" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_verify_catches_a_missing_executable(tmp_path: Path) -> None:
    unit = tmp_path / "robot-agent.service"
    unit.write_text(_unit_text("robot-agent").replace(INSTALLED_BIN, str(tmp_path / "nowhere")))
    res = subprocess.run(
        [_tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode != 0 and "robot-agent" in res.stderr


@pytest.mark.parametrize("name", UNITS)
def test_unit_exposure_is_at_most_3(name: str, tmp_path: Path) -> None:
    unit = _local_copy(name, tmp_path)
    res = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=yes", "--threshold=30", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = res.stdout + res.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, out
    exposure = float(m.group(1))
    print(f"{name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, out
    assert res.returncode == 0, out


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_as_a_supervised_hardened_service(name: str) -> None:
    d = _directives(_unit_text(name))
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"].endswith("s") and int(one["WatchdogSec"][:-1]) > 0
    assert one["Restart"] == "on-failure"
    assert int(one["StartLimitBurst"]) >= 1 and int(one["StartLimitIntervalSec"]) > 0
    assert one["User"] == name and one["Group"] == name
    assert one["StateDirectory"] == name and one["ConfigurationDirectory"] == name
    assert one["ExecStart"].startswith(f"{INSTALLED_BIN}/{name} ")
    assert f"--config /etc/{name}/" in one["ExecStart"]
    assert one["StandardOutput"] == one["StandardError"] == "journal"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "RestrictSUIDSGID"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict" and one["CapabilityBoundingSet"] == ""
    assert one["DevicePolicy"] == "closed" and "char-nvidia* rw" in d["DeviceAllow"]
    assert "@system-service" in d["SystemCallFilter"]


def test_agent_unit_allows_cameras_and_trainer_unit_does_not() -> None:
    agent = _directives(_unit_text("robot-agent"))
    trainer = _directives(_unit_text("robot-trainer"))
    assert "char-video4linux rw" in agent["DeviceAllow"]
    assert "char-video4linux rw" not in trainer["DeviceAllow"]
    # torch compiles CPU kernels into W+X memory; the agent's libraries need none
    assert agent["MemoryDenyWriteExecute"] == ["yes"]
    assert trainer["MemoryDenyWriteExecute"] == ["no"]


_MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, sqlite3, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        print("no-mdwe", ctypes.get_errno()); sys.exit(0)
    import cv2, numpy as np, onnxruntime as ort, zmq
    import agent.daemon  # everything the daemon imports
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    sess = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 64 for d in i.shape]
        feeds[i.name] = np.zeros(shape, np.uint8 if "uint8" in i.type else np.float32)
    q = sess.run(None, feeds)[0]
    ok, png = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))
    db = sqlite3.connect(sys.argv[2]); db.execute("create table t(x)"); db.commit()
    ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind("tcp://127.0.0.1:*"); s.close()
    print("served", q.shape, ok)
    """
)


def test_agent_serves_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """Guards MemoryDenyWriteExecute=yes in robot-agent.service (the kernel's MDWE prctl)."""
    model, db = ROOT / "policies/base/model.onnx", tmp_path / "x.db"
    res = subprocess.run(
        [sys.executable, "-c", _MDWE_PROBE, str(model), str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if res.stdout.startswith("no-mdwe"):
        pytest.skip(f"kernel without PR_SET_MDWE (Linux >= 6.3): {res.stdout.strip()}")
    assert res.returncode == 0 and "served" in res.stdout, res.stdout + res.stderr


def _stage(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "bash",
            str(ROOT / "systemd/install.sh"),
            "--root",
            str(root),
            "--no-users",
            "--no-venv",
            "--prefix",
            "/opt/rc",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_install_script_stages_units_configs_and_is_idempotent(tmp_path: Path) -> None:
    _tool("systemctl")
    root = tmp_path / "image"
    res = _stage(root)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in UNITS:
        unit = root / "etc/systemd/system" / f"{name}.service"
        assert f"ExecStart=/opt/rc/venv/bin/{name} " in unit.read_text()
        assert (
            root / "etc/systemd/system/multi-user.target.wants" / f"{name}.service"
        ).is_symlink()
    conf = root / "etc/robot-agent/agent.toml"
    assert conf.stat().st_mode & 0o777 == 0o640
    cfg = load_config(conf)  # the template is a valid agent config
    assert cfg.agent.data_dir == "" and cfg.policy.bundle == "/opt/rc/policies/base"
    assert (root / "opt/rc/policies/base/model.onnx").is_file()
    trainer_cfg = load_service_config(root / "etc/robot-trainer/trainer.toml")
    assert trainer_cfg.service.data_dir == ""
    assert trainer_cfg.service.base_bundle == "/opt/rc/policies/base"
    # an operator's edit survives a re-run; the result is otherwise the same
    conf.write_text(conf.read_text().replace("seed = 0", "seed = 7"))
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    res = _stage(root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert load_config(conf).driver.settings.seed == 7 and "kept" in res.stdout
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before


def test_install_script_refuses_unknown_options() -> None:
    res = subprocess.run(
        ["bash", str(ROOT / "systemd/install.sh"), "--bogus"], capture_output=True, text=True
    )
    assert res.returncode == 2 and "unknown option --bogus" in res.stderr


def _run_with_missing(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing ``module`` fails as if not installed."""
    prog = f"import sys; sys.modules[{module!r}] = None\n{code}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )


def test_robot_trainer_without_torch_names_the_trainer_extra() -> None:
    res = _run_with_missing("torch", "from trainer.entry import main; sys.exit(main(['--help']))")
    assert res.returncode == 2, res.stderr
    assert (
        "needs the [trainer] extra (torch), not installed here: pip install '.[trainer]'"
        in res.stderr
    )
    assert "Traceback" not in res.stderr


def test_robot_trainer_entry_point_runs_the_cli_when_torch_is_there() -> None:
    res = subprocess.run(
        [str(Path(sys.executable).parent / "robot-trainer"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "pretrain" in res.stdout, res.stderr


def test_sim_config_without_pybullet_names_the_sim_extra() -> None:
    res = _run_with_missing(
        "pybullet",
        "from agent.cli import main; sys.exit(main(['run', '--config', 'configs/sim.toml']))",
    )
    assert res.returncode == 2, res.stderr
    assert "needs the [sim] extra" in res.stderr and "pip install '.[sim]'" in res.stderr
    assert "Traceback" not in res.stderr


def test_readme_test_command_is_ci_and_installs_systemd_tools() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text().splitlines()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert test_cmd in ci
    assert test_cmd.startswith("command -v systemd-analyze >/dev/null || {")
    assert "apt-get install -y -qq systemd;" in test_cmd
