"""A corpus of bad policy bundles: each is refused with its reason code and leaves nothing in the
store, or is taken out of service at run time with a PolicyFault; healthy policies never fault.

Bad models are built with onnx.helper around the same tiny Q-function as testkit/fakes.py;
the "realistic" images are real frames of the pybullet sim cell.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.bundle import META_FILE, MODEL_FILE, WEIGHTS_FILE, validate_bundle, write_bundle
from agent.bundle_errors import REASONS, BundleError
from agent.cem import CemParams
from agent.config import PolicyConfig
from agent.loader import IMPORT_PREFIX, PolicyLoader, load_bundle, load_stored
from agent.policy import Policy, PolicyFault, PolicyLoadError, load_policy
from agent.spec import DEFAULT_SPEC, Spec

pytestmark = pytest.mark.timeout(120)

PCFG = PolicyConfig(warmup_runs=1, latency_runs=2, probe_images=4)
CEM = CemParams()
BASE = Path(__file__).resolve().parents[2] / "policies" / "base"
Images = list[np.ndarray]


# -- realistic images: frames of the sim cell under several conditions --------------------------


@pytest.fixture(scope="module")
def images() -> Images:
    from drivers.sim.cell import SimCell
    from drivers.sim.config import SimConfig

    cell = SimCell(SimConfig(seed=3))
    cell.start()
    frames: Images = []
    try:
        for cond in ("baseline", "harsh_lighting", "transparent", "checkerboard"):
            cell.set_condition(cond)
            for _ in range(3):
                frames.append(cell.observe().image.copy())
                cell.shuffle()
    finally:
        cell.close()
    return frames


# -- model builders -----------------------------------------------------------------------------


def _model(
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
        helper.make_node("Cast", ["image"], ["img_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["img_f"], ["img_mean"], keepdims=0),
        helper.make_node("Mul", ["img_mean", "gain"], ["img_term"]),
        helper.make_node("Sub", [actions_name, "target"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("MatMul", ["sq", "ones"], ["dist"]),
        helper.make_node("Mul", ["dist", "neg_sharp"], ["logit_a"]),
        helper.make_node("Add", ["logit_a", "img_term"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["q0"]),
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


def _bytes(model: Any) -> bytes:
    return bytes(model.SerializeToString())


def _write(root: Path, model: Any | bytes, weights: bytes = b"w" * 64, **meta: Any) -> Path:
    data = model if isinstance(model, bytes) else _bytes(model)
    return write_bundle(root, data, weights, {"parent_id": None, "condition": "test", **meta})


def _edit_meta(path: Path, **changes: Any) -> None:
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
    return _model(
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

    return _model(
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

    return _model(
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
    return _model(tail, [eye])


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
    data = _bytes(_model())
    return _write(tmp, data[: len(data) // 2])


def _truncated_after_hashing(tmp: Path) -> Path:
    p = _write(tmp, _model())
    data = (p / MODEL_FILE).read_bytes()
    (p / MODEL_FILE).write_bytes(data[: len(data) // 2])
    return p


def _renamed_input(tmp: Path) -> Path:
    return _write(tmp, _model(actions_name="acts"))


def _input_dtype(tmp: Path) -> Path:
    from onnx import TensorProto

    return _write(tmp, _model(image_type=TensorProto.FLOAT))


def _image_shape(tmp: Path) -> Path:
    return _write(tmp, _model(image_shape=[32, 32, 3]))


def _fixed_candidates(tmp: Path) -> Path:
    return _write(tmp, _model(actions_shape=[64, 3], check=False))


def _declared_n2(tmp: Path) -> Path:
    from onnx import TensorProto, helper

    out = [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N", 2])]
    return _write(tmp, _model(outputs=out, check=False))


def _real_shape_differs(tmp: Path) -> Path:
    return _write(tmp, _model([_node("Concat", ["q0", "q0"], ["q"], axis=0)]))


def _two_outputs(tmp: Path) -> Path:
    from onnx import TensorProto, helper

    outs = [
        helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("q0", TensorProto.FLOAT, ["N"]),
    ]
    return _write(tmp, _model(outputs=outs))


def _double_output(tmp: Path) -> Path:
    from onnx import TensorProto, helper

    outs = [helper.make_tensor_value_info("q", TensorProto.DOUBLE, ["N"])]
    return _write(tmp, _model([_node("Cast", ["q0"], ["q"], to=TensorProto.DOUBLE)], outputs=outs))


def _inf(tmp: Path) -> Path:
    tail = [
        _node("Mul", ["dist", "zero"], ["dz"]),
        _node("Reciprocal", ["dz"], ["r"]),
        _node("Add", ["q0", "r"], ["q"]),
    ]
    return _write(tmp, _model(tail))


def _unbounded(tmp: Path) -> Path:
    return _write(tmp, _model([_node("Identity", ["logit"], ["q"])]))


def _unknown_domain(tmp: Path) -> Path:
    from onnx import helper

    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)]
    tail = [helper.make_node("Identity", ["q0"], ["q"], domain="com.evil")]
    return _write(tmp, _model(tail, opsets=opsets, check=False))


def _runtime_only_domain(tmp: Path) -> Path:
    from onnx import helper

    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    tail = [helper.make_node("Gelu", ["q0"], ["q"], domain="com.microsoft")]
    return _write(tmp, _model(tail, opsets=opsets, check=False))


def _probe_raises(tmp: Path) -> Path:
    return _write(tmp, _model([_node("Reshape", ["q0", "eight"], ["q"])], [_i64("eight", [8])]))


def _checker_fails(tmp: Path) -> Path:
    return _write(tmp, _model([_node("Add", ["q0", "nowhere"], ["q"])], check=False))


def _external_in_weights(tmp: Path) -> Path:
    # the 12 bytes live in weights.safetensors, a hashed file: still refused outright
    weights = np.asarray([0.9, 0.9, 0.9], np.float32).tobytes() + b"pad" * 10
    return _write(tmp, with_external(_model(), WEIGHTS_FILE), weights=weights)


def _external_extra_file(tmp: Path) -> Path:
    p = _write(tmp, with_external(_model(), "target.bin"))
    (p / "target.bin").write_bytes(np.asarray([0.9, 0.9, 0.9], np.float32).tobytes())
    return p


def _external_outside(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "outside.bin").write_bytes(np.zeros(3, np.float32).tobytes())
    return _write(tmp / "b", with_external(_model(), "../../outside.bin"))


def _unlisted_file(tmp: Path) -> Path:
    p = _write(tmp, _model())
    (p / "README.txt").write_text("hello")
    return p


def _subdirectory(tmp: Path) -> Path:
    p = _write(tmp, _model())
    (p / "extra").mkdir()
    return p


def _sparse_huge(tmp: Path) -> Path:
    p = _write(tmp, _model())
    with open(p / WEIGHTS_FILE, "r+b") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: 300 MB apparent, nothing written
    return p


def _over_small_cap(tmp: Path) -> Path:
    return _write(tmp, _model())


def _slow(tmp: Path) -> Path:
    return _write(tmp, slow_model())


def _tampered_weights(tmp: Path) -> Path:
    p = _write(tmp, _model())
    (p / WEIGHTS_FILE).write_bytes(b"x" * 64)
    return p


def _garbage_meta(tmp: Path) -> Path:
    p = _write(tmp, _model())
    (p / META_FILE).write_text("{not json")
    return p


def _meta_not_object(tmp: Path) -> Path:
    p = _write(tmp, _model())
    (p / META_FILE).write_text("[1, 2]")
    return p


def _meta_bad_format(tmp: Path) -> Path:
    p = _write(tmp, _model())
    _edit_meta(p, format=99)
    return p


def _meta_id_path(tmp: Path) -> Path:
    p = _write(tmp, _model())
    _edit_meta(p, id="../../etc")
    return p


def _meta_files_extra(tmp: Path) -> Path:
    p = _write(tmp, _model())
    meta = json.loads((p / META_FILE).read_text())
    _edit_meta(p, files={**meta["files"], "x.bin": "0" * 64})
    return p


def _id_mismatch(tmp: Path) -> Path:
    p = _write(tmp, _model())
    _edit_meta(p, id="0123456789abcdef")
    return p


def _spec_mismatch(tmp: Path) -> Path:
    p = _write(tmp, _model())
    spec = Spec(workspace_x_m=0.5).to_dict()
    _edit_meta(p, spec=spec)
    return p


def _missing_weights(tmp: Path) -> Path:
    p = _write(tmp, _model())
    (p / WEIGHTS_FILE).unlink()
    return p


def _missing_meta(tmp: Path) -> Path:
    p = _write(tmp, _model())
    (p / META_FILE).unlink()
    return p


def _symlink_escaping(tmp: Path) -> Path:
    p = _write(tmp, _model())
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
    "nan_on_real_images": Case("non_finite", lambda t: _write(t, nan_on_real_images())),
    "range_on_real_images": Case(
        "out_of_range", lambda t: _write(t, out_of_range_on_real_images())
    ),
    "range_for_odd_counts": Case(
        "out_of_range", lambda t: _write(t, out_of_range_for_odd_counts())
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
    "garbage_meta": Case("bad_meta", _garbage_meta),
    "meta_not_object": Case("bad_meta", _meta_not_object),
    "meta_bad_format": Case("bad_meta", _meta_bad_format),
    "meta_id_is_a_path": Case("bad_meta", _meta_id_path),
    "meta_lists_extra_file": Case("bad_meta", _meta_files_extra),
    "id_mismatch": Case("id_mismatch", _id_mismatch),
    "spec_mismatch": Case("spec_mismatch", _spec_mismatch),
    "missing_weights": Case("missing_file", _missing_weights),
    "missing_meta": Case("bad_meta", _missing_meta),
    "symlink_escaping": Case("symlink", _symlink_escaping),
    "not_a_directory": Case("not_a_directory", _not_a_directory),
}


@pytest.fixture(scope="module")
def active(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Policy]:
    """A store holding one good policy (the active one) and that policy."""
    tmp = tmp_path_factory.mktemp("active")
    store = tmp / "store"
    active = _write(tmp / "in", _model(), weights=b"active")  # an id no corpus bundle shares
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
    nan = _write(tmp_path / "a", nan_on_real_images())
    odd = _write(tmp_path / "b", out_of_range_for_odd_counts())
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
    good = _write(tmp_path / "in", _model())
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
    _edit_meta(relabelled, condition="not what was trained")  # model and weights intact
    with pytest.raises(BundleError) as err:
        load_bundle(relabelled, store, DEFAULT_SPEC, PCFG, CEM, images)
    assert err.value.reason == "tampered"
    assert (store / first.id / WEIGHTS_FILE).read_bytes() == stored_weights
    assert _store_entries(store) == [first.id]
    again = load_bundle(good, store, DEFAULT_SPEC, PCFG, CEM, images)  # identical: accepted
    assert again.id == first.id and again.bundle.path == store / first.id


def test_store_copy_tampered_later_is_caught_by_hash_only_reload(tmp_path: Path) -> None:
    store = tmp_path / "store"
    pol = load_bundle(_write(tmp_path / "in", _model()), store, DEFAULT_SPEC, PCFG, CEM)
    reloaded = load_stored(store, pol.id, DEFAULT_SPEC, PCFG, CEM)
    assert reloaded.id == pol.id and reloaded.latency_budget_s is not None
    (store / pol.id / WEIGHTS_FILE).write_bytes(b"changed")
    with pytest.raises(BundleError) as err:
        load_stored(store, pol.id, DEFAULT_SPEC, PCFG, CEM)
    assert err.value.reason == "hash_mismatch"


# -- run time: PolicyFault ----------------------------------------------------------------------


def _unprobed(tmp: Path, model: Any) -> Policy:
    """Load a model skipping the probe (as if its bad inputs were never seen at validation)."""
    bundle = validate_bundle(_write(tmp, model), run_inference=False)
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
    pol = _unprobed(tmp_path, _model())
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
        good = _write(tmp_path / "in", _model())
        loader.submit(good, "good")
        ok = loader.wait(30)
        assert ok is not None and ok.policy is not None and ok.reason == ""
        assert ok.latency_s is not None and ok.policy_id == ok.policy.id
        bad = _write(tmp_path / "in", nan_on_real_images())
        loader.submit(bad, "nan", active_latency_s=ok.latency_s)
        slow = _write(tmp_path / "in", slow_model())
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
    pol = load_bundle(_write(tmp_path / "in", _model()), store, DEFAULT_SPEC, PCFG, CEM)
    again = load_bundle(store / pol.id, store, DEFAULT_SPEC, PCFG, CEM)
    assert again.bundle.path == store / pol.id and _store_entries(store) == [pol.id]
    (store / pol.id / "planted.onnx").write_bytes(b"x")
    with pytest.raises(BundleError) as err:
        load_bundle(store / pol.id, store, DEFAULT_SPEC, PCFG, CEM)
    assert err.value.reason == "unlisted_file"
    with pytest.raises(BundleError) as err:
        load_stored(store, "../" + pol.id, DEFAULT_SPEC, PCFG, CEM)
    assert err.value.reason == "bad_meta"
