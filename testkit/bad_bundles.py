"""A corpus of bad policy bundles, each with the reason code the loader must refuse it with,
built with onnx.helper around the same tiny Q-function as :mod:`testkit.fakes`; and frames of
the pybullet sim cell, the "realistic" images validation probes with.

Used by tests/agent/test_bad_bundles.py and ``python -m bench.bundle_validation``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle import META_FILE, MODEL_FILE, WEIGHTS_FILE, write_bundle
from agent.cem import CemParams
from agent.config import PolicyConfig
from agent.spec import Spec
from testkit.fakes import q_nodes

PCFG = PolicyConfig(warmup_runs=1, latency_runs=2, probe_images=4)
"""Validation as the tests run it: one warm-up, two timed runs, four probe images."""
CEM = CemParams()
Images = list[np.ndarray]


def sim_frames(seed: int, per_condition: int) -> Images:
    """``per_condition`` frames of a sim cell under baseline, harsh lighting, transparent
    objects and a checkerboard bin, shuffling the bin between frames."""
    from drivers.sim.cell import SimCell
    from drivers.sim.config import SimConfig

    cell = SimCell(SimConfig(seed=seed))
    cell.start()
    frames: Images = []
    try:
        for cond in ("baseline", "harsh_lighting", "transparent", "checkerboard"):
            cell.set_condition(cond)
            for _ in range(per_condition):
                frames.append(cell.observe().image.copy())
                cell.shuffle()
    finally:
        cell.close()
    return frames


# -- model builders -----------------------------------------------------------------------------


def q_model(
    tail: list[Any] | None = None,
    inits: list[Any] | None = None,
    image_type: int | None = None,
    image_shape: list[Any] | None = None,
    actions_name: str = "actions",
    actions_shape: list[Any] | None = None,
    outputs: list[Any] | None = None,
    opsets: list[Any] | None = None,
    check: bool = True,
) -> Any:
    """q0 = sigmoid(-4 |a - t|^2 + 0.001 mean(image)); ``tail`` maps q0 to q (default Identity)."""
    from onnx import TensorProto, helper, numpy_helper

    base_inits = [
        numpy_helper.from_array(np.asarray([[0.3, -0.2, 0.1]], np.float32), "target"),
        numpy_helper.from_array(np.ones((3,), np.float32), "ones"),
        numpy_helper.from_array(np.asarray(-4.0, np.float32), "neg_sharp"),
        numpy_helper.from_array(np.asarray(0.001, np.float32), "gain"),
        numpy_helper.from_array(np.asarray(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.asarray(100.0, np.float32), "hundred"),
        numpy_helper.from_array(np.asarray(2.0, np.float32), "two"),
    ]
    nodes = [
        *q_nodes(actions_name, "q0"),
        *(tail if tail is not None else [helper.make_node("Identity", ["q0"], ["q"])]),
    ]
    graph = helper.make_graph(
        nodes,
        "bad_q",
        [
            helper.make_tensor_value_info(
                "image", image_type or TensorProto.UINT8, image_shape or [64, 64, 3]
            ),
            helper.make_tensor_value_info(
                actions_name, TensorProto.FLOAT, actions_shape or ["N", 3]
            ),
        ],
        outputs or [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N"])],
        base_inits + (inits or []),
    )
    model = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", 17)])
    model.ir_version = 8
    if check:
        import onnx

        onnx.checker.check_model(model)
    return model


def model_bytes(model: Any) -> bytes:
    return bytes(model.SerializeToString())


def write_model(root: Path, model: Any | bytes, weights: bytes = b"w" * 64, **meta: Any) -> Path:
    data = model if isinstance(model, bytes) else model_bytes(model)
    return write_bundle(root, data, weights, {"parent_id": None, "condition": "test", **meta})


def edit_meta(path: Path, **changes: Any) -> None:
    meta = json.loads((path / META_FILE).read_text())
    meta.update(changes)
    (path / META_FILE).write_text(json.dumps(meta))


def _node(op: str, ins: list[str], outs: list[str], **kw: Any) -> Any:
    from onnx import helper

    return helper.make_node(op, ins, outs, **kw)


def _i64(name: str, value: Any) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, np.int64), name)


def nan_on_real_images() -> Any:
    """NaN when the image is darker on average than 100 (sim frames), finite on grey and noise."""
    return q_model(
        [
            _node("Sub", ["img_mean", "hundred"], ["m"]),
            _node("Sqrt", ["m"], ["s"]),
            _node("Mul", ["s", "zero"], ["z"]),
            _node("Add", ["q0", "z"], ["q"]),
        ]
    )


def out_of_range_on_real_images() -> Any:
    """Q + 2 when the image is darker on average than 100."""
    from onnx import TensorProto

    return q_model(
        [
            _node("Less", ["img_mean", "hundred"], ["dark"]),
            _node("Cast", ["dark"], ["darkf"], to=TensorProto.FLOAT),
            _node("Mul", ["darkf", "two"], ["bump"]),
            _node("Add", ["q0", "bump"], ["q"]),
        ]
    )


def out_of_range_for_odd_counts() -> Any:
    """Q + 2 when the number of candidate actions is odd (fine for CEM's 64)."""
    from onnx import TensorProto

    return q_model(
        [
            _node("Shape", ["actions"], ["shp"]),
            _node("Gather", ["shp", "idx0"], ["n"], axis=0),
            _node("Mod", ["n", "two_i"], ["odd"]),
            _node("Cast", ["odd"], ["oddf"], to=TensorProto.FLOAT),
            _node("Mul", ["oddf", "two"], ["bump"]),
            _node("Add", ["q0", "bump"], ["q"]),
        ],
        [_i64("idx0", 0), _i64("two_i", 2)],
    )


def slow_model(size: int = 512, layers: int = 2) -> Any:
    """A chain of size x size MatMuls on the action path (its result is multiplied by zero)."""
    from onnx import numpy_helper

    tail = [
        _node("ReduceSum", ["actions"], ["asum"], keepdims=0),
        _node("Add", ["eye", "asum"], ["m0"]),  # not a scale: ORT cannot fold the chain
    ]
    for i in range(layers):
        tail.append(_node("MatMul", [f"m{i}", "eye"], [f"m{i + 1}"]))
    tail += [
        _node("ReduceSum", [f"m{layers}"], ["msum"], keepdims=0),
        _node("Mul", ["msum", "zero"], ["z"]),
        _node("Add", ["q0", "z"], ["q"]),
    ]
    eye = numpy_helper.from_array(np.eye(size, dtype=np.float32), "eye")
    return q_model(tail, [eye])


def with_external(model: Any, location: str, offset: int = 0) -> Any:
    """Move the ``target`` initializer's 12 bytes to external data at ``location``."""
    from onnx import TensorProto

    for t in model.graph.initializer:
        if t.name == "target":
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", str(offset)), ("length", "12")):
                e = t.external_data.add()
                e.key, e.value = k, v
    return model


# -- the corpus: (kind, expected reason, builder(tmp) -> source dir[, config]) ------------------


@dataclass
class Case:
    reason: str
    build: Callable[[Path], Path]
    pcfg: PolicyConfig = field(default_factory=lambda: PCFG)


def _truncated_model(tmp: Path) -> Path:
    data = model_bytes(q_model())
    return write_model(tmp, data[: len(data) // 2])


def _truncated_after_hashing(tmp: Path) -> Path:
    p = write_model(tmp, q_model())
    data = (p / MODEL_FILE).read_bytes()
    (p / MODEL_FILE).write_bytes(data[: len(data) // 2])
    return p


def _renamed_input(tmp: Path) -> Path:
    return write_model(tmp, q_model(actions_name="acts"))


def _input_dtype(tmp: Path) -> Path:
    from onnx import TensorProto

    return write_model(tmp, q_model(image_type=TensorProto.FLOAT))


def _image_shape(tmp: Path) -> Path:
    return write_model(tmp, q_model(image_shape=[32, 32, 3]))


def _fixed_candidates(tmp: Path) -> Path:
    return write_model(tmp, q_model(actions_shape=[64, 3], check=False))


def _declared_n2(tmp: Path) -> Path:
    from onnx import TensorProto, helper

    out = [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N", 2])]
    return write_model(tmp, q_model(outputs=out, check=False))


def _real_shape_differs(tmp: Path) -> Path:
    return write_model(tmp, q_model([_node("Concat", ["q0", "q0"], ["q"], axis=0)]))


def _two_outputs(tmp: Path) -> Path:
    from onnx import TensorProto, helper

    outs = [
        helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("q0", TensorProto.FLOAT, ["N"]),
    ]
    return write_model(tmp, q_model(outputs=outs))


def _double_output(tmp: Path) -> Path:
    from onnx import TensorProto, helper

    outs = [helper.make_tensor_value_info("q", TensorProto.DOUBLE, ["N"])]
    return write_model(
        tmp, q_model([_node("Cast", ["q0"], ["q"], to=TensorProto.DOUBLE)], outputs=outs)
    )


def _inf(tmp: Path) -> Path:
    tail = [
        _node("Mul", ["dist", "zero"], ["dz"]),
        _node("Reciprocal", ["dz"], ["r"]),
        _node("Add", ["q0", "r"], ["q"]),
    ]
    return write_model(tmp, q_model(tail))


def _unbounded(tmp: Path) -> Path:
    return write_model(tmp, q_model([_node("Identity", ["logit"], ["q"])]))


def _unknown_domain(tmp: Path) -> Path:
    from onnx import helper

    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)]
    tail = [helper.make_node("Identity", ["q0"], ["q"], domain="com.evil")]
    return write_model(tmp, q_model(tail, opsets=opsets, check=False))


def _runtime_only_domain(tmp: Path) -> Path:
    from onnx import helper

    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    tail = [helper.make_node("Gelu", ["q0"], ["q"], domain="com.microsoft")]
    return write_model(tmp, q_model(tail, opsets=opsets, check=False))


def _probe_raises(tmp: Path) -> Path:
    return write_model(
        tmp, q_model([_node("Reshape", ["q0", "eight"], ["q"])], [_i64("eight", [8])])
    )


def _checker_fails(tmp: Path) -> Path:
    return write_model(tmp, q_model([_node("Add", ["q0", "nowhere"], ["q"])], check=False))


def _external_in_weights(tmp: Path) -> Path:
    # the 12 bytes live in weights.safetensors, a hashed file: still refused outright
    weights = np.asarray([0.9, 0.9, 0.9], np.float32).tobytes() + b"pad" * 10
    return write_model(tmp, with_external(q_model(), WEIGHTS_FILE), weights=weights)


def _external_extra_file(tmp: Path) -> Path:
    p = write_model(tmp, with_external(q_model(), "target.bin"))
    (p / "target.bin").write_bytes(np.asarray([0.9, 0.9, 0.9], np.float32).tobytes())
    return p


def _external_outside(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "outside.bin").write_bytes(np.zeros(3, np.float32).tobytes())
    return write_model(tmp / "b", with_external(q_model(), "../../outside.bin"))


def _unlisted_file(tmp: Path) -> Path:
    p = write_model(tmp, q_model())
    (p / "README.txt").write_text("hello")
    return p


def _subdirectory(tmp: Path) -> Path:
    p = write_model(tmp, q_model())
    (p / "extra").mkdir()
    return p


def _sparse_huge(tmp: Path) -> Path:
    p = write_model(tmp, q_model())
    with open(p / WEIGHTS_FILE, "r+b") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: 300 MB apparent, nothing written
    return p


def _over_small_cap(tmp: Path) -> Path:
    return write_model(tmp, q_model())


def _slow(tmp: Path) -> Path:
    return write_model(tmp, slow_model())


def _tampered_weights(tmp: Path) -> Path:
    p = write_model(tmp, q_model())
    (p / WEIGHTS_FILE).write_bytes(b"x" * 64)
    return p


def _meta_edited(**changes: Any) -> Callable[[Path], Path]:
    """A builder: a good bundle whose meta.json then carries ``changes``."""

    def build(tmp: Path) -> Path:
        p = write_model(tmp, q_model())
        edit_meta(p, **changes)
        return p

    return build


def _meta_text(text: str) -> Callable[[Path], Path]:
    """A builder: a good bundle whose meta.json is then replaced by ``text``."""

    def build(tmp: Path) -> Path:
        p = write_model(tmp, q_model())
        (p / META_FILE).write_text(text)
        return p

    return build


def _without(name: str) -> Callable[[Path], Path]:
    """A builder: a good bundle with its file ``name`` then removed."""

    def build(tmp: Path) -> Path:
        p = write_model(tmp, q_model())
        (p / name).unlink()
        return p

    return build


def _meta_files_extra(tmp: Path) -> Path:
    p = write_model(tmp, q_model())
    meta = json.loads((p / META_FILE).read_text())
    edit_meta(p, files={**meta["files"], "x.bin": "0" * 64})
    return p


def _symlink_escaping(tmp: Path) -> Path:
    p = write_model(tmp, q_model())
    secret = tmp / "secret.bin"
    shutil.copy(p / WEIGHTS_FILE, secret)
    (p / WEIGHTS_FILE).unlink()
    os.symlink(secret, p / WEIGHTS_FILE)  # same bytes, so only the link itself is wrong
    return p


def _not_a_directory(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "file").write_text("x")
    return tmp / "file"


CORPUS: dict[str, Case] = {
    "truncated_model": Case("onnx_invalid", _truncated_model),
    "truncated_after_hashing": Case("hash_mismatch", _truncated_after_hashing),
    "renamed_input": Case("bad_input", _renamed_input),
    "input_dtype": Case("bad_input", _input_dtype),
    "image_shape": Case("bad_input", _image_shape),
    "fixed_candidate_count": Case("bad_input", _fixed_candidates),
    "declared_output_n2": Case("bad_output", _declared_n2),
    "real_output_shape_differs": Case("bad_output_shape", _real_shape_differs),
    "two_outputs": Case("bad_output", _two_outputs),
    "double_output": Case("bad_output", _double_output),
    "inf": Case("non_finite", _inf),
    "unbounded_q": Case("out_of_range", _unbounded),
    "nan_on_real_images": Case("non_finite", lambda t: write_model(t, nan_on_real_images())),
    "range_on_real_images": Case(
        "out_of_range", lambda t: write_model(t, out_of_range_on_real_images())
    ),
    "range_for_odd_counts": Case(
        "out_of_range", lambda t: write_model(t, out_of_range_for_odd_counts())
    ),
    "unknown_domain": Case("bad_domain", _unknown_domain),
    "runtime_only_domain": Case("bad_domain", _runtime_only_domain),
    "probe_raises": Case("probe_failed", _probe_raises),
    "checker_fails": Case("onnx_invalid", _checker_fails),
    "external_data_in_weights": Case("external_data", _external_in_weights),
    "external_data_extra_file": Case("unlisted_file", _external_extra_file),
    "external_data_outside": Case("external_data", _external_outside),
    "unlisted_file": Case("unlisted_file", _unlisted_file),
    "subdirectory": Case("unlisted_file", _subdirectory),
    "sparse_300mb": Case("too_large", _sparse_huge),
    "over_configured_cap": Case(
        "too_large", _over_small_cap, PolicyConfig(warmup_runs=1, max_bundle_bytes=1024)
    ),
    "slow": Case("too_slow", _slow),
    "slow_first_policy_over_cap": Case(
        "too_slow", _slow, PolicyConfig(warmup_runs=1, latency_runs=2, max_latency_s=0.001)
    ),
    "tampered_weights": Case("hash_mismatch", _tampered_weights),
    "garbage_meta": Case("bad_meta", _meta_text("{not json")),
    "meta_not_object": Case("bad_meta", _meta_text("[1, 2]")),
    "meta_bad_format": Case("bad_meta", _meta_edited(format=99)),
    "meta_id_is_a_path": Case("bad_meta", _meta_edited(id="../../etc")),
    "meta_lists_extra_file": Case("bad_meta", _meta_files_extra),
    "id_mismatch": Case("id_mismatch", _meta_edited(id="0123456789abcdef")),
    "spec_mismatch": Case("spec_mismatch", _meta_edited(spec=Spec(workspace_x_m=0.5).to_dict())),
    "missing_weights": Case("missing_file", _without(WEIGHTS_FILE)),
    "missing_meta": Case("bad_meta", _without(META_FILE)),
    "symlink_escaping": Case("symlink", _symlink_escaping),
    "not_a_directory": Case("not_a_directory", _not_a_directory),
}
