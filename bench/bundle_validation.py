"""What bundle validation and the run-time guard cost, and what they catch.

Usage: python -m bench.bundle_validation [--bundle policies/base] [--repeats 5] [--decisions 2000]

Measures, serving the way the daemon does (CPU, 1 intra-op thread, CEM 64/6/3):
- full validation + import + warm-up of the bundle with 8 recorded sim images
  (agent.loader.load_bundle, fresh store each time; median over --repeats);
- the hash-level reload of the same bundle from the store (agent.loader.load_stored);
- decision latency p50/p99 with the run-time guard (Policy.act) and without it (CEM on the
  bare score function), interleaved in blocks of 100 decisions;
- the bad-bundle corpus of testkit/bad_bundles.py: how many kinds are refused with the
  expected reason code, and the slowest refusal.
Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.cem import CemParams
from agent.config import PolicyConfig
from agent.loader import load_bundle, load_stored
from agent.spec import DEFAULT_SPEC
from testkit.bad_bundles import CEM, CORPUS, PCFG, q_model, sim_frames, write_model


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, default=Path("policies/base"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--decisions", type=int, default=2000)
    args = ap.parse_args()
    images = sim_frames(seed=11, per_condition=2)
    pcfg, cem = PolicyConfig(), CemParams(iterations=3)
    tmp = Path(tempfile.mkdtemp(prefix="bundle-bench-"))
    try:
        full, stored = [], []
        policy = None
        for i in range(args.repeats):
            store = tmp / f"store{i}"
            t0 = time.perf_counter()
            policy = load_bundle(args.bundle, store, DEFAULT_SPEC, pcfg, cem, images)
            full.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_stored(store, policy.id, DEFAULT_SPEC, pcfg, cem)
            stored.append(time.perf_counter() - t0)
        assert policy is not None
        guarded: list[float] = []
        bare: list[float] = []
        cem_opt = policy._cem  # the same optimiser the policy serves with
        for block in range(args.decisions // 100):
            for j in range(100):
                img = images[(block + j) % len(images)]
                if block % 2:
                    t0 = time.perf_counter()
                    cem_opt.optimise(policy.scorer(img))
                    bare.append(time.perf_counter() - t0)
                else:
                    guarded.append(policy.act(img).latency_s)
        corpus = _corpus(tmp / "corpus", images)
        result = {
            "bench": "bundle_validation",
            "bundle": str(args.bundle),
            "validate_import_warm_s_median": round(float(np.median(full)), 4),
            "stored_reload_s_median": round(float(np.median(stored)), 4),
            "warm_latency_ms": round((policy.validated_latency_s or 0) * 1e3, 3),
            "budget_ms": round((policy.latency_budget_s or 0) * 1e3, 1),
            "decision_p50_ms_guarded": round(_pct(guarded, 50), 3),
            "decision_p99_ms_guarded": round(_pct(guarded, 99), 3),
            "decision_p50_ms_bare": round(_pct(bare, 50), 3),
            "decision_p99_ms_bare": round(_pct(bare, 99), 3),
            **corpus,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


def _corpus(root: Path, images: list[np.ndarray]) -> dict[str, object]:
    from agent.bundle_errors import BundleError
    from agent.policy import PolicyLoadError

    store = root / "store"
    good = write_model(root / "active", q_model(), b"active")
    active = load_bundle(good, store, DEFAULT_SPEC, PCFG, CEM)
    right, wrong, slowest = 0, [], 0.0
    for kind, case in sorted(CORPUS.items()):
        src = case.build(root / kind)
        first = kind.endswith("first_policy_over_cap")
        t0 = time.perf_counter()
        try:
            latency = None if first else active.validated_latency_s
            load_bundle(src, store, DEFAULT_SPEC, case.pcfg, CEM, images, latency)
            wrong.append(f"{kind}: accepted")
        except (BundleError, PolicyLoadError) as exc:
            if exc.reason == case.reason:
                right += 1
            else:
                wrong.append(f"{kind}: {exc.reason}")
        slowest = max(slowest, time.perf_counter() - t0)
    leftovers = sorted(p.name for p in store.iterdir() if p.name != active.id)
    return {
        "corpus_kinds": len(CORPUS),
        "corpus_refused_with_expected_reason": right,
        "corpus_wrong": wrong,
        "store_leftovers": leftovers,
        "slowest_refusal_s": round(slowest, 3),
    }


if __name__ == "__main__":
    main()
