"""The model of a bundle checked before it may serve: the graph, then probe inferences.

:func:`check_model` parses ``model.onnx`` and refuses external tensor data, operator
domains beyond the standard one, and inputs/outputs other than the spec's;
:func:`probe_model` runs it in ONNX Runtime on probe images and action counts and refuses
a Q that is not finite and in [0, 1]. Both raise :class:`agent.bundle_errors.BundleError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.bundle_errors import BundleError
from agent.spec import ONNX_ACTIONS_INPUT, ONNX_IMAGE_INPUT, ONNX_Q_OUTPUT, Spec

ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})
"""Operator domains a served graph may use: the standard ONNX operators only."""
PROBE_ACTION_COUNTS = (1, 7, 64)
"""Candidate counts the probe inference runs with (CEM's own count is added)."""


# -- the model: parse, external data, domains, declared inputs/outputs, checker ---------------


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph, its nodes' attributes and subgraphs."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any) -> Iterator[Any]:
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        for sp in a.sparse_tensors:
            yield sp.values
            yield sp.indices
        if a.HasField("g"):
            yield from _tensors(a.g)
        for g in a.graphs:
            yield from _tensors(g)


def _nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.HasField("g"):
                yield from _nodes(a.g)
            for g in a.graphs:
                yield from _nodes(g)


def _dims(value_info: Any) -> list[int | None] | None:
    """Declared dims (None for a symbolic or unknown one), or None when no shape is declared."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def check_model(model_bytes: bytes, spec: Spec, path: Path) -> Any:
    """Parse and check a model; returns the ModelProto.

    Order: parse (``onnx_invalid``), external data (``external_data``),
    operator domains (``bad_domain``), declared inputs and outputs
    (``bad_input``, ``bad_output``), ``onnx.checker`` with ``full_check``
    (``onnx_invalid``).
    """
    import onnx

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:
        raise BundleError("onnx_invalid", f"{path}: model.onnx does not parse: {exc}") from exc
    for t in _tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            raise BundleError(
                "external_data", f"{path}: tensor {t.name!r} uses external data (not allowed)"
            )
    for op in model.opset_import:
        if op.domain not in ALLOWED_DOMAINS:
            raise BundleError("bad_domain", f"{path}: opset domain {op.domain!r} not allowed")
    if len(model.functions):
        raise BundleError("bad_domain", f"{path}: model-local functions are not allowed")
    for node in _nodes(model.graph):
        if node.domain not in ALLOWED_DOMAINS:
            raise BundleError(
                "bad_domain", f"{path}: node {node.op_type} uses domain {node.domain!r}"
            )
    _check_io(model, spec, path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise BundleError("onnx_invalid", f"{path}: onnx.checker failed: {exc}") from exc
    return model


def _check_io(model: Any, spec: Spec, path: Path) -> None:
    import onnx

    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in inits}
    if set(inputs) != {ONNX_IMAGE_INPUT, ONNX_ACTIONS_INPUT}:
        raise BundleError(
            "bad_input",
            f"{path}: model inputs {sorted(inputs)} must be "
            f"[{ONNX_ACTIONS_INPUT!r}, {ONNX_IMAGE_INPUT!r}]",
        )
    img = inputs[ONNX_IMAGE_INPUT]
    if img.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise BundleError("bad_input", f"{path}: input {ONNX_IMAGE_INPUT!r} must be uint8")
    if _dims(img) != list(spec.image_shape):
        raise BundleError(
            "bad_input",
            f"{path}: input {ONNX_IMAGE_INPUT!r} shape {_dims(img)} != {list(spec.image_shape)}",
        )
    act = inputs[ONNX_ACTIONS_INPUT]
    if act.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise BundleError("bad_input", f"{path}: input {ONNX_ACTIONS_INPUT!r} must be float32")
    adims = _dims(act)
    if adims is None or len(adims) != 2 or adims[0] is not None or adims[1] != spec.action_dim:
        raise BundleError(
            "bad_input",
            f"{path}: input {ONNX_ACTIONS_INPUT!r} shape {adims} must be [N, {spec.action_dim}]"
            " with N dynamic",
        )
    outputs = list(graph.output)
    if [o.name for o in outputs] != [ONNX_Q_OUTPUT]:
        raise BundleError(
            "bad_output", f"{path}: outputs {[o.name for o in outputs]} must be [{ONNX_Q_OUTPUT!r}]"
        )
    q = outputs[0]
    if q.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise BundleError("bad_output", f"{path}: output {ONNX_Q_OUTPUT!r} must be float32")
    qdims = _dims(q)
    if qdims is None or len(qdims) != 1 or qdims[0] is not None:
        raise BundleError(
            "bad_output", f"{path}: output {ONNX_Q_OUTPUT!r} shape {qdims} must be [N], N dynamic"
        )


# -- the probe inference --------------------------------------------------------------------


def probe_images(
    spec: Spec, recorded: Sequence[npt.NDArray[np.uint8]] = ()
) -> list[npt.NDArray[np.uint8]]:
    """Images a bundle is probed on: grey, seeded noise, then the well-formed recorded ones."""
    grey = np.full(spec.image_shape, 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, spec.image_shape, dtype=np.uint8)
    good = [
        np.ascontiguousarray(im)
        for im in recorded
        if isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.shape == spec.image_shape
    ]
    return [grey, noise, *good]


def probe_actions(spec: Spec, n: int, seed: int) -> npt.NDArray[np.float32]:
    """``n`` candidate actions in the box; from 8 on, the first rows are the box's corners."""
    rng = np.random.default_rng(seed)
    acts = rng.uniform(spec.low, spec.high, size=(n, spec.action_dim)).astype(np.float32)
    if n >= 2**spec.action_dim:
        grid = np.array(np.meshgrid(*[[0, 1]] * spec.action_dim)).reshape(spec.action_dim, -1).T
        acts[: len(grid)] = np.where(grid == 1, spec.high, spec.low)
    return acts


def check_q(q: Any, n: int) -> str:
    """'' when ``q`` is a float32 [n] of finite values in [0, 1], else the reason code."""
    q = np.asarray(q)
    if q.shape != (n,) or q.dtype != np.float32:
        return "bad_output_shape"
    lo, hi = float(q.min()), float(q.max())
    if lo >= 0.0 and hi <= 1.0:
        return ""
    return "non_finite" if not bool(np.all(np.isfinite(q))) else "out_of_range"


def probe_model(
    model_bytes: bytes,
    spec: Spec,
    images: Sequence[npt.NDArray[np.uint8]],
    action_counts: Sequence[int] = PROBE_ACTION_COUNTS,
    path: Path | None = None,
) -> None:
    """Run the model on every image x action count (CPU); raises BundleError on any bad Q."""
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BundleError("load_failed", f"{path}: ONNX Runtime could not open it: {exc}") from exc
    for i, image in enumerate(images):
        for n in action_counts:
            actions = probe_actions(spec, n, seed=i * 1000 + n)
            try:
                out = sess.run(None, {ONNX_IMAGE_INPUT: image, ONNX_ACTIONS_INPUT: actions})
            except Exception as exc:
                raise BundleError(
                    "probe_failed", f"{path}: probe inference (image {i}, N={n}) failed: {exc}"
                ) from exc
            if len(out) != 1:
                raise BundleError("bad_output_shape", f"{path}: {len(out)} outputs, expected 1")
            q = np.asarray(out[0])
            code = check_q(q, n)
            if code == "bad_output_shape":
                raise BundleError(
                    code,
                    f"{path}: probe (image {i}, N={n}) gave q {q.dtype} {list(q.shape)},"
                    f" expected float32 [{n}]",
                )
            if code:
                bad = q[~((q >= 0) & (q <= 1))]
                raise BundleError(
                    code,
                    f"{path}: probe (image {i}, N={n}) gave Q outside [0, 1] or non-finite"
                    f" ({bad.size} of {n}, e.g. {float(bad[0])!r})",
                )
