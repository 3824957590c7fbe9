"""Test tiers: every test gets one marker from the table below, by its file.

``pytest -m unit`` runs the fast tier alone (pure logic, in memory: under a minute on two
cores); ``pytest`` runs everything (the README's command and CI). A test may carry its own
tier marker, which wins over its file's. A file not in the table is ``integration``: add a
new file here when it belongs elsewhere.

- unit: pure modules and in-memory objects; no sockets, no processes, no sim cell.
- contract: one component against its protocol with real sockets or a real sim cell,
  in this process (the command wire, rate limits, CURVE, driver contracts, the bridge).
- integration: the daemon in a thread with real SQLite, ZeroMQ and ONNX Runtime; trainer
  pieces with real torch training.
- e2e: whole processes (the agent, the trainer, the demo, systemd units, benches).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "contract", "integration", "e2e")

FILES: dict[str, str] = {
    "agent/test_decision_guard.py": "unit",
    "agent/test_detector.py": "unit",
    "agent/test_race.py": "unit",
    "agent/test_rounds.py": "unit",
    "test_demo_races.py": "unit",
    "agent/test_race_crash.py": "e2e",
    "agent/test_units.py": "unit",
    "drivers/test_bridge_docs.py": "unit",
    "drivers/test_camera.py": "unit",
    "drivers/test_driver_config.py": "unit",
    "trainer/test_trainer_augment.py": "unit",
    "trainer/test_trainer_dataset.py": "unit",
    "trainer/test_trainer_qnet.py": "unit",
    "trainer/test_trainer_cem.py": "unit",
    "trainer/test_finetune_selection.py": "unit",
    "trainer/test_finetune_gate.py": "unit",
    "trainer/test_finetune_rounds.py": "integration",
    "agent/test_link_jobs.py": "unit",
    "agent/test_export_budget.py": "contract",
    "drivers/test_sim_look.py": "unit",
    "plumbing/test_atomic.py": "unit",
    "plumbing/test_backoff.py": "unit",
    "plumbing/test_config_loader.py": "unit",
    "plumbing/test_names.py": "unit",
    "test_layers.py": "unit",
    "plumbing/test_curve.py": "contract",
    "plumbing/test_router.py": "contract",
    "plumbing/test_sd_notify.py": "contract",
    "plumbing/test_signals.py": "contract",
    "agent/test_edge_protocol.py": "contract",
    "agent/test_edge_ratelimit.py": "contract",
    "agent/test_edge_fuzz.py": "contract",
    "agent/test_edge_curve.py": "contract",
    "agent/test_fake_driver_contract.py": "contract",
    "drivers/test_bridge_contract.py": "contract",
    "drivers/test_bridge_failures.py": "contract",
    "drivers/test_bridge_protocol.py": "contract",
    "drivers/test_sim_schedule.py": "contract",
    "test_sim_contract.py": "contract",
    "test_sim_cell.py": "contract",
    "agent/test_crash.py": "e2e",
    "agent/test_hung_policy.py": "e2e",
    "agent/test_process.py": "e2e",
    "agent/test_no_trainer.py": "e2e",
    "test_console_extras.py": "e2e",
    "test_demo.py": "e2e",
    "test_loop_e2e.py": "e2e",
    "test_bench_continual.py": "e2e",
    "test_bench_continual_log.py": "unit",
    "test_experiments.py": "e2e",
    "test_systemd.py": "e2e",
    "trainer/test_bench_ceiling.py": "e2e",
    "trainer/test_bench_finetune.py": "e2e",
    "trainer/test_replay_archive.py": "e2e",
}
"""Tier of each test file (path under tests/); the rest are integration."""

ROOT = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: the {tier} tier (tests/conftest.py)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(t) for t in TIERS):
            continue
        rel = Path(str(item.path)).resolve().relative_to(ROOT).as_posix()
        item.add_marker(getattr(pytest.mark, FILES.get(rel, "integration")))
