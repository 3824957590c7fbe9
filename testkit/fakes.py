"""Test doubles for the agent: a complete fake Driver and tiny ONNX policy bundles."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.bundle import write_bundle
from agent.driver import GraspOutcome, Observation, StartClose, StepResult
from agent.spec import DEFAULT_SPEC, Spec


class FakeDriver(StartClose):
    """A Driver whose grasps succeed with a configurable (switchable) probability."""

    def __init__(
        self,
        p_success: float = 0.8,
        seed: int = 0,
        spec: Spec = DEFAULT_SPEC,
        grasp_time_s: float = 0.0,
    ) -> None:
        self._spec = spec
        self.p_success = p_success
        self.grasp_time_s = grasp_time_s
        self._rng = np.random.default_rng(seed)
        self._started = False
        self.actions: list[npt.NDArray[np.float32]] = []
        self.in_grasp = threading.Event()
        self.closed = 0

    @property
    def spec(self) -> Spec:
        return self._spec

    def set_success(self, p: float) -> None:
        """Switch the world: from now on grasps succeed with probability ``p``."""
        self.p_success = p

    def start(self) -> None:
        self._started = True

    def observe(self) -> Observation:
        if not self._started:
            raise RuntimeError("not started")
        img = self._rng.integers(0, 256, self._spec.image_shape, dtype=np.uint8)
        return Observation(image=img, step=0, timestamp=time.time())

    def execute(self, action: npt.NDArray[np.float32]) -> StepResult:
        if not self._started:
            raise RuntimeError("not started")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (self._spec.action_dim,) or not np.all(np.isfinite(a)):
            raise ValueError(f"bad action {a!r}")
        a = self._spec.clip_action(a)
        self.in_grasp.set()
        if self.grasp_time_s:
            time.sleep(self.grasp_time_s)
        self.actions.append(a)
        ok = bool(self._rng.random() < self.p_success)
        self.in_grasp.clear()
        return StepResult(
            reward=float(ok),
            done=True,
            outcome=GraspOutcome(success=ok, sensed_by="fake", detail={"p": self.p_success}),
            duration_s=self.grasp_time_s,
        )

    def shuffle(self) -> None:
        if not self._started:
            raise RuntimeError("not started")

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def close(self) -> None:
        self._started = False
        self.closed += 1


class FileWorldDriver(FakeDriver):
    """A fake robot whose success rate is read from a file before each grasp: a test changes
    the world by writing it, and the world outlives a restart of the agent process."""

    def __init__(self, world: Path, **kw: Any) -> None:
        super().__init__(**kw)
        self.world = world

    def execute(self, action: npt.NDArray[np.float32]) -> StepResult:
        with contextlib.suppress(OSError, ValueError):
            self.p_success = float(self.world.read_text())
        return super().execute(action)


def make_fake_driver(
    seed: int = 0, p_success: float = 0.8, grasp_time_s: float = 0.0, world: str = ""
) -> FakeDriver:
    """Factory for ``driver.type = "import"`` configs (subprocess tests); ``world``: a file
    holding the success rate (:class:`FileWorldDriver`)."""
    if world:
        return FileWorldDriver(
            Path(world), p_success=p_success, seed=seed, grasp_time_s=grasp_time_s
        )
    return FakeDriver(p_success=p_success, seed=seed, grasp_time_s=grasp_time_s)


def q_nodes(actions: str, out: str) -> list[Any]:
    """The ONNX nodes of the tiny Q-function, ``out`` = sigmoid(neg_sharp * |``actions`` -
    target|^2 + gain * mean(image)) over the initializers ``target``, ``ones`` (3 ones),
    ``neg_sharp`` and ``gain``; the image term is an image-only subgraph (a trunk to split)."""
    from onnx import TensorProto, helper

    return [
        helper.make_node("Cast", ["image"], ["img_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["img_f"], ["img_mean"], keepdims=0),
        helper.make_node("Mul", ["img_mean", "gain"], ["img_term"]),
        helper.make_node("Sub", [actions, "target"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("MatMul", ["sq", "ones"], ["dist"]),
        helper.make_node("Mul", ["dist", "neg_sharp"], ["logit_a"]),
        helper.make_node("Add", ["logit_a", "img_term"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [out]),
    ]


def tiny_model(
    target: tuple[float, float, float] = (0.3, -0.2, 0.1),
    sharp: float = 4.0,
    image_gain: float = 0.001,
    opset: int = 17,
) -> bytes:
    """ONNX graph obeying the contract: q = sigmoid(-sharp*|a - target|^2 + gain*mean(image)).

    The image term is an image-only subgraph, so the agent can split the trunk off.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.asarray([target], np.float32), "target"),
        numpy_helper.from_array(np.ones((3,), np.float32), "ones"),
        numpy_helper.from_array(np.asarray(-sharp, np.float32), "neg_sharp"),
        numpy_helper.from_array(np.asarray(image_gain, np.float32), "gain"),
    ]
    nodes = q_nodes("actions", "q")
    graph = helper.make_graph(
        nodes,
        "tiny_q",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, [64, 64, 3]),
            helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["N", 3]),
        ],
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def make_bundle(root: Path, seed: int = 0, parent_id: str | None = None, **kw: Any) -> Path:
    """Write a tiny valid bundle under ``root``; distinct seeds give distinct ids."""
    rng = np.random.default_rng(seed)
    target = tuple(float(v) for v in rng.uniform(-0.5, 0.5, 3))
    model = tiny_model(target=target, **kw)  # type: ignore[arg-type]
    return write_bundle(
        root,
        model,
        b"fake-weights-" + str(seed).encode(),
        {"parent_id": parent_id, "condition": "base", "training": {"kind": "test"}},
    )


def broken_bundle(root: Path) -> Path:
    """A bundle whose model gives Q outside [0, 1] (fails validation)."""
    import onnx

    m = onnx.load_from_string(tiny_model())
    for n in m.graph.node:
        if n.op_type == "Sigmoid":
            n.op_type = "Identity"
    return write_bundle(root, m.SerializeToString(), b"broken", {"parent_id": None})


class WorldFileDriver(FakeDriver):
    """A FakeDriver whose camera sees a white bin once the file ``world`` exists: a world
    change a test makes from outside the agent's process."""

    def __init__(self, world: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.world = Path(world)

    def observe(self) -> Observation:
        obs = super().observe()
        if self.world.exists():
            return Observation(np.full(self._spec.image_shape, 255, np.uint8), 0, obs.timestamp)
        return obs


def make_world_driver(world: str, grasp_time_s: float = 0.0, seed: int = 0) -> WorldFileDriver:
    """Factory for ``driver.type = "import"`` configs (subprocess tests)."""
    return WorldFileDriver(world, grasp_time_s=grasp_time_s, seed=seed)


def hang_on_white_bundle(root: Path, seed: int = 5) -> Path:
    """A valid bundle whose every decision on a white image runs a Loop of 10^12 iterations
    (fast on noise, grey and recorded ordinary images, so it passes validation)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load_from_string(tiny_model(target=(0.1 * seed, 0.0, 0.0)))
    g = m.graph
    for n in g.node:
        if n.op_type == "Sigmoid":
            n.input[0] = "logit_ok"
        if n.op_type == "Add" and n.output[0] == "logit":
            n.output[0] = "logit_pre"
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
        [numpy_helper.from_array(np.asarray(1.0, np.float32), "one")],
    )
    g.initializer.extend(
        [
            numpy_helper.from_array(np.asarray(250.0, np.float32), "c250"),
            numpy_helper.from_array(np.asarray(10**12, np.int64), "big"),
            numpy_helper.from_array(np.asarray(True), "yes"),
            numpy_helper.from_array(np.asarray(0.0, np.float32), "c0"),
        ]
    )
    sigmoid = [n for n in g.node if n.op_type == "Sigmoid"]
    rest = [n for n in g.node if n.op_type != "Sigmoid"]
    del g.node[:]
    g.node.extend(rest)
    g.node.extend(
        [
            helper.make_node("Greater", ["img_mean", "c250"], ["white"]),
            helper.make_node("Cast", ["white"], ["white_i"], to=TensorProto.INT64),
            helper.make_node("Mul", ["white_i", "big"], ["trips"]),
            helper.make_node("Loop", ["trips", "yes", "c0"], ["spun"], body=body),
            helper.make_node("Mul", ["spun", "c0"], ["nothing"]),
            helper.make_node("Add", ["logit_pre", "nothing"], ["logit_ok"]),
            *sigmoid,
        ]
    )
    onnx.checker.check_model(m)
    return write_bundle(
        root,
        m.SerializeToString(),
        b"hang-weights-" + str(seed).encode(),
        {"parent_id": None, "condition": "base", "training": {"kind": "test"}},
    )
