"""Test doubles for the agent: a complete fake Driver and tiny ONNX policy bundles."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.bundle import write_bundle
from agent.spec import DEFAULT_SPEC, Spec
from drivers.base import GraspOutcome, Observation, StartClose, StepResult


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


def make_fake_driver(
    seed: int = 0, p_success: float = 0.8, grasp_time_s: float = 0.0
) -> FakeDriver:
    """Factory for ``driver.type = "import"`` configs (subprocess tests)."""
    return FakeDriver(p_success=p_success, seed=seed, grasp_time_s=grasp_time_s)


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
    nodes = [
        helper.make_node("Cast", ["image"], ["img_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["img_f"], ["img_mean"], keepdims=0),
        helper.make_node("Mul", ["img_mean", "gain"], ["img_term"]),
        helper.make_node("Sub", ["actions", "target"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("MatMul", ["sq", "ones"], ["dist"]),
        helper.make_node("Mul", ["dist", "neg_sharp"], ["logit_a"]),
        helper.make_node("Add", ["logit_a", "img_term"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["q"]),
    ]
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
