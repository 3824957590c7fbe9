"""Decision latency of the agent's ONNX Runtime + numpy CEM on one thread.

Usage: python -m bench.cem_latency [--decisions N] [--bundle DIR]

Serves a policy the way the daemon does (agent.policy.load_policy: CPU
provider, 1 intra-op thread, no spinning, trunk split, warm-up) and reports:
p50/p99 latency of a whole decision (trunk + CEM); the ratio of the p50 to
``iterations x`` one batched forward pass of the full graph (overhead of CEM
and of the Python glue); and the ratio of a torch-eager CEM of the same
network (trainer.cem.cem_maximise on trainer.qnet.QNet, trunk computed once,
inference mode, 1 thread) to the agent's p50. The network is the shipped base
policy if --bundle is given, else a randomly initialised QNet exported by the
trainer (same shape). The process is pinned to one core.
Last line of stdout: one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.bundle import validate_bundle
from agent.config import CemConfig, PolicyConfig
from agent.policy import load_policy


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--bundle", type=Path, help="bundle to serve (default: trainer random init)")
    ap.add_argument("--torch-decisions", type=int, default=300)
    ap.add_argument("--iterations", type=int, default=2, help="CEM iterations (default 2)")
    args = ap.parse_args()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    import torch

    from trainer.cem import CemConfig as TorchCem
    from trainer.cem import cem_maximise
    from trainer.export import load_qnet, make_bundle
    from trainer.qnet import Encoded, QNet

    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="cem-bench-")
    if args.bundle:
        bundle = validate_bundle(args.bundle)
        net = load_qnet(bundle).eval()
        source = str(args.bundle)
    else:
        torch.manual_seed(0)
        net = QNet().eval()
        bundle = make_bundle(net, {"condition": "bench"}, Path(tmp))
        source = "trainer export (random init QNet)"

    ccfg = CemConfig(iterations=args.iterations)
    policy = load_policy(
        bundle, PolicyConfig(provider="cpu", intra_op_threads=1, warmup_runs=20), ccfg
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(16)]

    lat: list[float] = []
    for i in range(args.decisions):
        t0 = time.perf_counter()
        policy.act(images[i % len(images)])
        lat.append(time.perf_counter() - t0)

    acts = rng.uniform(-1, 1, (ccfg.samples, 3)).astype(np.float32)
    fwd: list[float] = []
    for i in range(args.decisions):
        t0 = time.perf_counter()
        policy.q_values(images[i % len(images)], acts)
        fwd.append(time.perf_counter() - t0)

    low, high = torch.tensor(bundle.spec.low), torch.tensor(bundle.spec.high)
    tcfg = TorchCem(ccfg.samples, ccfg.elites, ccfg.iterations, ccfg.init_std, ccfg.min_std)
    gen = torch.Generator().manual_seed(0)
    timg = [torch.from_numpy(im).unsqueeze(0) for im in images]
    tlat: list[float] = []
    with torch.inference_mode():
        for i in range(args.torch_decisions + 20):
            t0 = time.perf_counter()
            enc = net.encode(timg[i % len(timg)])

            def score(c: torch.Tensor, e: Encoded = enc) -> torch.Tensor:
                return torch.sigmoid(net.logits_from(e, c))

            cem_maximise(score, 1, low, high, tcfg, gen)
            if i >= 20:  # warm-up
                tlat.append(time.perf_counter() - t0)

    p50, p99 = _pct(lat, 50), _pct(lat, 99)
    fwd50 = _pct(fwd, 50)
    t50 = _pct(tlat, 50)
    ratio = p50 / (ccfg.iterations * fwd50)
    result = {
        "bench": "cem_latency",
        "network": source,
        "policy_id": bundle.id,
        "providers": policy.providers,
        "threads": 1,
        "trunk_split": policy.split,
        "cem": {"samples": ccfg.samples, "elites": ccfg.elites, "iterations": ccfg.iterations},
        "decisions": args.decisions,
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "forward_p50_ms": round(fwd50, 3),
        "ratio_to_iterations_x_forward": round(ratio, 3),
        "overhead_pct": round((ratio - 1) * 100, 1),
        "torch_eager_p50_ms": round(t50, 3),
        "speedup_vs_torch_eager": round(t50 / p50, 2),
        "goals": {
            "p99_le_5ms": p99 <= 5.0,
            "overhead_le_20pct": ratio <= 1.2,
            "speedup_ge_5x": t50 / p50 >= 5.0,
        },
    }
    print(f"decision p50 {p50:.3f} ms  p99 {p99:.3f} ms  (split trunk: {policy.split})")
    print(
        f"one batched forward ({ccfg.samples} actions) p50 {fwd50:.3f} ms; "
        f"decision / ({ccfg.iterations} x forward) = {ratio:.3f}"
    )
    print(f"torch eager CEM p50 {t50:.3f} ms -> {t50 / p50:.1f}x slower than the agent")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
