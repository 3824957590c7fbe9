"""Policy serving: ONNX Runtime sessions for a validated bundle, plus CEM.

The only module that serves with ONNX Runtime. :func:`load_policy` opens the
sessions (CUDA when present, else CPU; no thread spinning), optionally splits
the graph into an image-only trunk and an action head so the trunk runs once
per decision, checks the split against the full graph, warms up with full CEM
decisions, times its warm decision latency and arms the run-time guard.
:meth:`Policy.act` is one decision; it raises :class:`PolicyFault` when the
policy misbehaves (see :meth:`Policy.act`).
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.bundle import Bundle
from agent.cem import Cem, CemParams, CemResult
from agent.config import PolicyConfig
from agent.onnxcheck import check_q, probe_images
from agent.spec import ONNX_ACTIONS_INPUT, ONNX_IMAGE_INPUT, ONNX_Q_OUTPUT, Spec

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
SPLIT_TOLERANCE = 1e-5


class PolicyLoadError(RuntimeError):
    """A bundle could not be turned into a served policy; ``reason`` is a bundle reason code."""

    def __init__(self, message: str, reason: str = "load_failed") -> None:
        super().__init__(message)
        self.reason = reason


class PolicyFault(RuntimeError):
    """A served policy misbehaved at run time (non-finite or out-of-range Q, over budget).

    Raised by :meth:`Policy.act`; the daemon takes the policy out of service and
    restores the last good one. ``reason`` is a short machine-readable code.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class Decision:
    """One decision: the action, its Q and how long it took."""

    action: F32
    """Chosen normalised action, float32 [A]."""
    q: float
    """Q of the chosen action."""
    latency_s: float
    """Wall time of the whole decision (trunk + CEM)."""


def choose_providers(choice: str) -> list[str]:
    """ONNX Runtime providers for a config choice ("auto", "cpu", "cuda")."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise PolicyLoadError("policy.provider = 'cuda' but ONNX Runtime has no CUDA provider")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available and _cuda_device_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _cuda_device_present() -> bool:
    # onnxruntime-gpu lists the CUDA provider even on hosts without a GPU; look for one.
    return os.path.exists("/dev/nvidiactl") and ctypes.util.find_library("cuda") is not None


def session_options(threads: int) -> Any:
    """Session options: fixed intra-op threads, one inter-op thread, spinning off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def split_trunk(model: Any) -> tuple[Any, Any, list[str]] | None:
    """Split an ONNX model into (trunk, head, feature names), or None if it can't be split.

    The trunk holds every node that depends on the image but not on the
    actions; its outputs are the image-only tensors the action-dependent nodes
    read. The head takes those tensors plus the actions and produces Q.
    """
    import onnx
    import onnx.utils

    graph = model.graph
    static = {i.name for i in graph.initializer}
    image_dep: set[str] = {ONNX_IMAGE_INPUT}
    action_dep: set[str] = {ONNX_ACTIONS_INPUT}
    frontier: list[str] = []
    for node in graph.node:
        ins = [n for n in node.input if n]
        has_subgraph = any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        )
        if has_subgraph or any(n in action_dep for n in ins):
            action_dep.update(o for o in node.output if o)
            frontier.extend(n for n in ins if n in image_dep and n not in frontier)
        elif any(n in image_dep for n in ins):
            image_dep.update(o for o in node.output if o)
        else:
            static.update(o for o in node.output if o)
    frontier = [n for n in frontier if n != ONNX_IMAGE_INPUT]
    if not frontier or ONNX_Q_OUTPUT not in action_dep:
        return None
    inferred = onnx.shape_inference.infer_shapes(model)
    ex = onnx.utils.Extractor(inferred)
    try:
        trunk = ex.extract_model([ONNX_IMAGE_INPUT], frontier)
        head = ex.extract_model([*frontier, ONNX_ACTIONS_INPUT], [ONNX_Q_OUTPUT])
    except (ValueError, KeyError) as exc:
        log.info("trunk split not possible: %s", exc)
        return None
    return trunk, head, frontier


class Policy:
    """A served policy: a bundle's ONNX sessions and a CEM optimiser. Not thread-safe."""

    def __init__(
        self,
        bundle: Bundle,
        full: Any,
        cem: Cem,
        trunk: Any | None = None,
        head: Any | None = None,
        features: list[str] | None = None,
    ) -> None:
        self.bundle = bundle
        self.spec: Spec = bundle.spec
        self._full = full
        self._trunk = trunk
        self._head = head
        self._features = features or []
        self._cem = cem
        self.warm = False
        self.validated_latency_s: float | None = None
        """Warm decision latency measured at load (see measure_latency; None until measured)."""
        self.latency_budget_s: float | None = None
        """Per-decision budget of the run-time guard (None: latency not guarded)."""
        self.budget_strikes = 5
        """Consecutive decisions over budget that raise PolicyFault."""
        self.budget_hard_cap_s = float("inf")
        """One decision this long (and CPU-busy beyond the budget) raises PolicyFault."""
        self._strikes = 0
        self._run_options = _run_options()
        self._aborted = False

    @property
    def id(self) -> str:
        return self.bundle.id

    @property
    def split(self) -> bool:
        """True when the image trunk runs once per decision."""
        return self._trunk is not None

    @property
    def providers(self) -> list[str]:
        return list(self._full.get_providers())

    def q_values(self, image: npt.NDArray[np.uint8], actions: F32) -> F32:
        """Q of each action for one image, through the full graph (one forward pass)."""
        (q,) = self._full.run(
            [ONNX_Q_OUTPUT],
            {ONNX_IMAGE_INPUT: image, ONNX_ACTIONS_INPUT: actions},
            self._run_options,
        )
        return np.asarray(q, dtype=np.float32)

    def scorer(self, image: npt.NDArray[np.uint8]) -> Callable[[F32], F32]:
        """A score function for CEM on this image; runs the trunk now if the graph is split."""
        if self._trunk is None or self._head is None:
            return lambda a: self.q_values(image, a)
        feats = self._trunk.run(self._features, {ONNX_IMAGE_INPUT: image}, self._run_options)
        feed: dict[str, Any] = dict(zip(self._features, feats, strict=True))
        head = self._head

        def score(actions: F32) -> F32:
            feed[ONNX_ACTIONS_INPUT] = actions
            (q,) = head.run([ONNX_Q_OUTPUT], feed, self._run_options)
            return np.asarray(q)

        return score

    def abort(self) -> None:
        """Stop the decision in progress (any thread): ONNX Runtime's terminate flag ends
        the running graph at its next node, and this and every later ``act`` raises
        ``PolicyFault("hung")``: an aborted policy is never trusted again."""
        self._aborted = True
        self._run_options.terminate = True

    def arm(self, budget_s: float, strikes: int, hard_cap_s: float) -> None:
        """Guard decision latency from now on (see :meth:`act`)."""
        self.latency_budget_s = budget_s
        self.budget_strikes = strikes
        self.budget_hard_cap_s = hard_cap_s
        self._strikes = 0

    def act(self, image: npt.NDArray[np.uint8]) -> Decision:
        """Pick an action for ``image`` by CEM (one decision).

        Raises ValueError on a bad image (the caller's fault) and
        :class:`PolicyFault` when the policy misbehaves: every scored batch
        must be float32 [N] of finite values in [0, 1] (``bad_output_shape``,
        ``non_finite``, ``out_of_range``); ONNX Runtime must not fail
        (``inference_failed``); once armed, ``budget_strikes`` consecutive
        decisions over ``latency_budget_s``, or one decision over
        ``budget_hard_cap_s`` whose thread CPU time also exceeds the budget
        (a stalled process burns no CPU, so an OS hiccup never counts), raise
        ``over_budget``; after :meth:`abort` (a deadline kept by another
        thread), ``hung``.
        """
        self.spec.check_image(image)
        t0 = time.perf_counter()
        c0 = time.thread_time()
        try:
            if self._aborted:
                raise PolicyFault("hung", f"policy {self.id}: aborted earlier")
            res: CemResult = self._cem.optimise(_guarded(self.scorer(image)))
        except Exception as exc:
            if self._aborted:
                raise PolicyFault(
                    "hung",
                    f"policy {self.id}: decision aborted after"
                    f" {time.perf_counter() - t0:.1f} s (deadline)",
                ) from exc
            if isinstance(exc, PolicyFault):
                raise
            raise PolicyFault("inference_failed", f"policy {self.id}: {exc}") from exc
        if self._aborted:  # the graph ignored the flag but came back: still out of service
            raise PolicyFault(
                "hung", f"policy {self.id}: decision took {time.perf_counter() - t0:.1f} s"
            )
        dt = time.perf_counter() - t0
        if self.latency_budget_s is not None:
            self._check_budget(dt, time.thread_time() - c0)
        return Decision(action=self.spec.clip_action(res.action), q=res.q, latency_s=dt)

    def _check_budget(self, dt: float, cpu: float) -> None:
        budget = self.latency_budget_s
        assert budget is not None
        if dt <= budget:
            self._strikes = 0
            return
        self._strikes += 1
        if dt > self.budget_hard_cap_s and cpu > budget:
            raise PolicyFault(
                "over_budget",
                f"policy {self.id}: one decision took {dt:.3f} s"
                f" (hard cap {self.budget_hard_cap_s:.3f} s)",
            )
        if self._strikes >= self.budget_strikes:
            raise PolicyFault(
                "over_budget",
                f"policy {self.id}: {self._strikes} decisions in a row over the"
                f" {budget * 1000:.1f} ms budget (last {dt * 1000:.1f} ms)",
            )

    def warm_up(self, runs: int) -> None:
        """Run full decisions on a grey and a noise image so the first real one is fast."""
        rng = np.random.default_rng(0)
        for i in range(runs):
            if i % 2:
                img = rng.integers(0, 256, self.spec.image_shape, dtype=np.uint8)
            else:
                img = np.full(self.spec.image_shape, 128, np.uint8)
            self.act(img)
        self.warm = True

    def measure_latency(self, images: Sequence[npt.NDArray[np.uint8]], runs: int) -> float:
        """Warm latency: for each image the fastest of ``runs`` decisions, then the slowest image.

        The minimum per image discards time stolen by other processes (noise
        only ever adds), the maximum over images keeps a policy that is slow
        only on some inputs slow.
        """
        return max(min(self.act(img).latency_s for _ in range(runs)) for img in images)


def _run_options() -> Any:
    """Per-policy ORT run options (its terminate flag is how :meth:`Policy.abort` works)."""
    import onnxruntime as ort

    return ort.RunOptions()


def _guarded(score: Callable[[F32], F32]) -> Callable[[F32], F32]:
    """Wrap a score function so a bad batch of Q raises PolicyFault (two reductions per batch)."""

    def guarded(actions: F32) -> F32:
        q = score(actions)
        code = check_q(q, actions.shape[0])
        if code:
            raise PolicyFault(code, _describe(q, actions.shape[0]))
        return q

    return guarded


def _describe(q: Any, n: int) -> str:
    q = np.asarray(q)
    if q.shape != (n,) or q.dtype != np.float32:
        return f"q is {q.dtype} {list(q.shape)}, expected float32 [{n}]"
    return f"Q in [{float(q.min()):.4g}, {float(q.max()):.4g}] (must be finite, in [0, 1])"


def load_policy(
    bundle: Bundle,
    pcfg: PolicyConfig,
    ccfg: CemParams,
    latency_images: Sequence[npt.NDArray[np.uint8]] = (),
) -> Policy:
    """Open ONNX Runtime sessions for a validated bundle, check the split, warm up, arm.

    After ``pcfg.warmup_runs`` decisions, measures the warm latency on grey,
    noise and ``latency_images`` (:meth:`Policy.measure_latency`) and
    arms the guard with budget max(budget_factor x that, budget_floor_s).
    Raises PolicyLoadError (its ``reason`` a bundle reason code).
    """
    import onnx
    import onnxruntime as ort

    providers = choose_providers(pcfg.provider)
    so = session_options(pcfg.intra_op_threads)
    try:
        model = onnx.load(str(bundle.model_path), load_external_data=False)
        full = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    except Exception as exc:
        raise PolicyLoadError(f"policy {bundle.id}: ONNX Runtime could not load it: {exc}") from exc
    spec = bundle.spec
    cem = Cem(ccfg, spec.low, spec.high)
    trunk = head = None
    features: list[str] | None = None
    if pcfg.split_trunk:
        parts = None
        try:
            parts = split_trunk(model)
        except Exception as exc:  # an odd graph is served whole, not rejected
            log.info("policy %s: trunk split failed (%s); serving the whole graph", bundle.id, exc)
        if parts is not None:
            t_model, h_model, features = parts
            try:
                trunk = ort.InferenceSession(t_model.SerializeToString(), so, providers=providers)
                head = ort.InferenceSession(h_model.SerializeToString(), so, providers=providers)
            except Exception as exc:
                log.info("policy %s: split sessions failed (%s)", bundle.id, exc)
                trunk = head = None
    policy = Policy(bundle, full, cem, trunk, head, features)
    if policy.split and not _split_matches(policy, ccfg.samples):
        log.warning(
            "policy %s: split graph disagrees with the full graph; not splitting", bundle.id
        )
        policy = Policy(bundle, full, cem)
    try:
        policy.warm_up(pcfg.warmup_runs)
        latency = policy.measure_latency(probe_images(spec, latency_images), pcfg.latency_runs)
    except PolicyFault as exc:
        raise PolicyLoadError(f"policy {bundle.id}: warm-up: {exc}", exc.reason) from exc
    except Exception as exc:
        raise PolicyLoadError(f"policy {bundle.id}: warm-up failed: {exc}") from exc
    policy.validated_latency_s = latency
    policy.arm(
        max(pcfg.budget_factor * latency, pcfg.budget_floor_s),
        pcfg.budget_strikes,
        pcfg.budget_hard_cap_s,
    )
    return policy


def load_offline(bundle: Bundle, ccfg: CemParams) -> Policy:
    """A validated bundle served as the daemon serves it (one intra-op thread) for offline
    work (data collection, evaluations), without the run-time latency guard: there a slow
    decision on a busy machine costs time, not a robot's control loop (the guard once took
    the policy out and killed a pre-training run's collection)."""
    policy = load_policy(bundle, PolicyConfig(intra_op_threads=1), ccfg)
    policy.latency_budget_s = None
    return policy


def _split_matches(policy: Policy, n: int) -> bool:
    rng = np.random.default_rng(1)
    spec = policy.spec
    for _ in range(2):
        img = rng.integers(0, 256, spec.image_shape, dtype=np.uint8)
        acts = rng.uniform(spec.low, spec.high, (n, spec.action_dim)).astype(np.float32)
        try:
            q_split = policy.scorer(img)(acts)
        except Exception:
            return False
        if q_split.shape != (n,):
            return False
        if float(np.max(np.abs(q_split - policy.q_values(img, acts)))) > SPLIT_TOLERANCE:
            return False
    return True
