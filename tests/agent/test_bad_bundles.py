"""A corpus of bad policy bundles (testkit/bad_bundles.py): each is refused with its reason
code and leaves nothing in the store, or is taken out of service at run time with a
PolicyFault; healthy policies never fault.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.bundle import WEIGHTS_FILE, validate_bundle
from agent.bundle_errors import REASONS, BundleError
from agent.cem import CemParams
from agent.config import PolicyConfig
from agent.loader import IMPORT_PREFIX, PolicyLoader, load_bundle, load_stored
from agent.policy import Policy, PolicyFault, PolicyLoadError, load_offline, load_policy
from agent.spec import DEFAULT_SPEC
from testkit.bad_bundles import (
    CEM,
    CORPUS,
    PCFG,
    Images,
    edit_meta,
    nan_on_real_images,
    out_of_range_for_odd_counts,
    out_of_range_on_real_images,
    q_model,
    sim_frames,
    slow_model,
    write_model,
)

pytestmark = pytest.mark.timeout(120)

BASE = Path(__file__).resolve().parents[2] / "policies" / "base"


# -- realistic images: frames of the sim cell under several conditions --------------------------


@pytest.fixture(scope="module")
def images() -> Images:
    return sim_frames(seed=3, per_condition=3)


@pytest.fixture(scope="module")
def active(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Policy]:
    """A store holding one good policy (the active one) and that policy."""
    tmp = tmp_path_factory.mktemp("active")
    store = tmp / "store"
    active = write_model(tmp / "in", q_model(), weights=b"active")  # an id no corpus bundle shares
    policy = load_bundle(active, store, DEFAULT_SPEC, PCFG, CEM)
    return store, policy


def _store_entries(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir())


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_bad_bundle_refused_with_reason_and_store_untouched(
    kind: str, tmp_path: Path, active: tuple[Path, Policy], images: Images
) -> None:
    store, policy = active
    case = CORPUS[kind]
    before = _store_entries(store)
    source = case.build(tmp_path / "src")
    active_latency = None if kind.endswith("first_policy_over_cap") else policy.validated_latency_s
    with pytest.raises((BundleError, PolicyLoadError)) as err:
        load_bundle(source, store, DEFAULT_SPEC, case.pcfg, CEM, images, active_latency)
    assert err.value.reason == case.reason, f"{kind}: {err.value}"
    assert err.value.reason in REASONS
    assert _store_entries(store) == before  # nothing copied, nothing left behind


def test_corpus_covers_twenty_kinds_and_documented_codes() -> None:
    assert len(CORPUS) >= 20
    assert {c.reason for c in CORPUS.values()} <= set(REASONS)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    for code in [*REASONS, "over_budget", "inference_failed"]:
        assert f"`{code}`" in docs, f"reason code {code} is not documented in docs/agent.md"


def test_realistic_images_and_several_counts_are_what_catch_them(
    tmp_path: Path, images: Images
) -> None:
    nan = write_model(tmp_path / "a", nan_on_real_images())
    odd = write_model(tmp_path / "b", out_of_range_for_odd_counts())
    validate_bundle(nan)  # grey and noise alone do not see it ...
    with pytest.raises(BundleError) as err:
        validate_bundle(nan, images=images[:1])
    assert err.value.reason == "non_finite"
    validate_bundle(odd, action_counts=(64,))  # ... nor does CEM's count alone
    with pytest.raises(BundleError) as err:
        validate_bundle(odd, action_counts=(1, 7, 64))
    assert err.value.reason == "out_of_range"


def test_tampered_bundle_with_id_already_in_store_is_refused(
    tmp_path: Path, images: Images
) -> None:
    store = tmp_path / "store"
    good = write_model(tmp_path / "in", q_model())
    first = load_bundle(good, store, DEFAULT_SPEC, PCFG, CEM, images)
    stored_weights = (store / first.id / WEIGHTS_FILE).read_bytes()
    forged = tmp_path / "forged" / first.id
    shutil.copytree(good, forged)
    (forged / WEIGHTS_FILE).write_bytes(b"evil" * 16)  # same id claimed, other content
    with pytest.raises(BundleError) as err:
        load_bundle(forged, store, DEFAULT_SPEC, PCFG, CEM, images)
    assert err.value.reason == "tampered"
    relabelled = tmp_path / "relabelled" / first.id
    shutil.copytree(good, relabelled)
    edit_meta(relabelled, condition="not what was trained")  # model and weights intact
    with pytest.raises(BundleError) as err:
        load_bundle(relabelled, store, DEFAULT_SPEC, PCFG, CEM, images)
    assert err.value.reason == "tampered"
    assert (store / first.id / WEIGHTS_FILE).read_bytes() == stored_weights
    assert _store_entries(store) == [first.id]
    again = load_bundle(good, store, DEFAULT_SPEC, PCFG, CEM, images)  # identical: accepted
    assert again.id == first.id and again.bundle.path == store / first.id


def test_store_copy_tampered_later_is_caught_by_hash_only_reload(tmp_path: Path) -> None:
    store = tmp_path / "store"
    pol = load_bundle(write_model(tmp_path / "in", q_model()), store, DEFAULT_SPEC, PCFG, CEM)
    reloaded = load_stored(store, pol.id, DEFAULT_SPEC, PCFG, CEM)
    assert reloaded.id == pol.id and reloaded.latency_budget_s is not None
    (store / pol.id / WEIGHTS_FILE).write_bytes(b"changed")
    with pytest.raises(BundleError) as err:
        load_stored(store, pol.id, DEFAULT_SPEC, PCFG, CEM)
    assert err.value.reason == "hash_mismatch"


# -- run time: PolicyFault ----------------------------------------------------------------------


def _unprobed(tmp: Path, model: Any) -> Policy:
    """Load a model skipping the probe (as if its bad inputs were never seen at validation)."""
    bundle = validate_bundle(write_model(tmp, model), run_inference=False)
    return load_policy(bundle, PCFG, CEM)


def test_policy_fault_non_finite_on_real_images_at_run_time(tmp_path: Path, images: Images) -> None:
    pol = _unprobed(tmp_path, nan_on_real_images())
    assert 0 <= pol.act(np.full((64, 64, 3), 128, np.uint8)).q <= 1
    with pytest.raises(PolicyFault) as err:
        pol.act(images[0])
    assert err.value.reason == "non_finite"


def test_policy_fault_out_of_range_at_run_time(tmp_path: Path, images: Images) -> None:
    pol = _unprobed(tmp_path, out_of_range_on_real_images())
    with pytest.raises(PolicyFault) as err:
        pol.act(images[1])
    assert err.value.reason == "out_of_range"


def test_policy_fault_after_consecutive_decisions_over_budget(
    tmp_path: Path, images: Images
) -> None:
    pol = _unprobed(tmp_path, q_model())
    pol.arm(budget_s=1e-9, strikes=3, hard_cap_s=float("inf"))
    pol.act(images[0])
    pol.act(images[0])
    with pytest.raises(PolicyFault) as err:
        pol.act(images[0])
    assert err.value.reason == "over_budget"
    pol.arm(budget_s=1e-9, strikes=3, hard_cap_s=float("inf"))
    for _ in range(4):  # one decision within budget in between resets the count
        pol.act(images[0])
        pol.latency_budget_s = 10.0
        pol.act(images[0])
        pol.latency_budget_s = 1e-9


def test_one_decision_over_the_hard_cap_faults_only_when_busy(tmp_path: Path) -> None:
    pol = _unprobed(tmp_path, slow_model(layers=1))
    pol.arm(budget_s=1e-6, strikes=100, hard_cap_s=2e-6)
    with pytest.raises(PolicyFault) as err:  # wall and CPU both over: the policy is slow
        pol.act(np.full((64, 64, 3), 9, np.uint8))
    assert err.value.reason == "over_budget" and "hard cap" in str(err.value)
    pol.arm(budget_s=0.01, strikes=100, hard_cap_s=0.05)
    pol._check_budget(5.0, 0.001)  # a 5 s stall with no CPU (SIGSTOP, VM pause): one strike
    assert pol._strikes == 1


def test_offline_work_serves_without_the_latency_guard(tmp_path: Path, images: Images) -> None:
    """Collection and evaluations (load_offline) never fault on a slow decision: on a busy
    machine the daemon's guard took a policy out mid-collection and killed a pre-training
    run. The daemon's load_policy arms the guard."""
    bundle = validate_bundle(write_model(tmp_path, slow_model(layers=1)), run_inference=False)
    assert load_policy(bundle, PCFG, CEM).latency_budget_s is not None
    pol = load_offline(bundle, CEM)
    assert pol.latency_budget_s is None
    pol.budget_strikes, pol.budget_hard_cap_s = 1, 1e-9  # what would fault a guarded policy
    for _ in range(3):
        assert 0 <= pol.act(images[0]).q <= 1


def test_shipped_base_policy_never_faults_on_sim_images(tmp_path: Path, images: Images) -> None:
    cem = CemParams(iterations=3)  # as configs/sim.toml serves it
    pcfg = PolicyConfig()
    pol = load_bundle(BASE, tmp_path / "store", DEFAULT_SPEC, pcfg, cem, images)
    assert pol.latency_budget_s is not None and pol.latency_budget_s >= pcfg.budget_floor_s
    qs = [pol.act(images[i % len(images)]).q for i in range(300)]
    assert min(qs) >= 0.0 and max(qs) <= 1.0
    latency = pol.validated_latency_s
    child = load_bundle(BASE, tmp_path / "store", DEFAULT_SPEC, pcfg, cem, images, latency)
    assert child.id == pol.id  # the same bundle passes the 1.5x latency check against itself


# -- the loader thread --------------------------------------------------------------------------


def test_loader_thread_probes_recorded_images_and_reports_reasons(
    tmp_path: Path, images: Images
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / (IMPORT_PREFIX + "crashed")).mkdir()  # left by a crash mid-import
    calls: list[str] = []

    def recorded() -> list[np.ndarray]:
        calls.append(threading.current_thread().name)
        return images

    loader = PolicyLoader(store, DEFAULT_SPEC, PCFG, CEM, probe_images=recorded)
    loader.start()
    try:
        good = write_model(tmp_path / "in", q_model())
        loader.submit(good, "good")
        ok = loader.wait(30)
        assert ok is not None and ok.policy is not None and ok.reason == ""
        assert ok.latency_s is not None and ok.policy_id == ok.policy.id
        bad = write_model(tmp_path / "in", nan_on_real_images())
        loader.submit(bad, "nan", active_latency_s=ok.latency_s)
        slow = write_model(tmp_path / "in", slow_model())
        loader.submit(slow, "slow", active_latency_s=ok.latency_s)
        loader.submit_stored(ok.policy_id, "warm")
        r_nan, r_slow, r_warm = loader.wait(30), loader.wait(30), loader.wait(30)
    finally:
        loader.close()
    assert r_nan is not None and r_nan.policy is None and r_nan.reason == "non_finite"
    assert r_nan.policy_id == bad.name and r_nan.tag == "nan" and r_nan.error
    assert r_slow is not None and r_slow.reason == "too_slow", r_slow
    assert r_warm is not None and r_warm.policy is not None and r_warm.policy.id == ok.policy_id
    assert calls and all(name == "policy-loader" for name in calls)
    assert _store_entries(store) == [ok.policy_id]  # leftovers removed, rejects never stored
    assert loader.pending == 0


def test_bundle_inside_the_store_is_checked_in_place(tmp_path: Path) -> None:
    store = tmp_path / "store"
    pol = load_bundle(write_model(tmp_path / "in", q_model()), store, DEFAULT_SPEC, PCFG, CEM)
    again = load_bundle(store / pol.id, store, DEFAULT_SPEC, PCFG, CEM)
    assert again.bundle.path == store / pol.id and _store_entries(store) == [pol.id]
    (store / pol.id / "planted.onnx").write_bytes(b"x")
    with pytest.raises(BundleError) as err:
        load_bundle(store / pol.id, store, DEFAULT_SPEC, PCFG, CEM)
    assert err.value.reason == "unlisted_file"
    with pytest.raises(BundleError) as err:
        load_stored(store, "../" + pol.id, DEFAULT_SPEC, PCFG, CEM)
    assert err.value.reason == "bad_meta"
