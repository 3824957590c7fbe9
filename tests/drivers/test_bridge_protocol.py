"""The bridge protocol's pure builders and parsers (no sockets)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.driver import GraspOutcome, Observation, StepResult
from agent.spec import DEFAULT_SPEC
from agent.wire import decode, encode
from drivers.bridge import protocol as proto


def reply(result: dict[str, Any], arrays: dict[str, Any] | None = None) -> Any:
    return decode(proto.ok_reply("r1", result, arrays))


def test_step_result_round_trips() -> None:
    res = StepResult(1.0, True, GraspOutcome(True, "gripper_width", {"gap_m": 0.02}), 4.5)
    assert proto.parse_step_result(reply(proto.step_result(res))) == res


def test_observation_round_trips() -> None:
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    fields, arrays = proto.observation_result(Observation(img, 0, 12.5))
    obs = proto.parse_observation(reply(fields, arrays), DEFAULT_SPEC)
    assert np.array_equal(obs.image, img) and obs.timestamp == 12.5


@pytest.mark.parametrize(
    "result",
    [
        {"reward": 1.0, "done": True, "duration_s": 1.0, "outcome": None},
        {"reward": 1.0, "done": "yes", "duration_s": 1.0, "outcome": None},
        {"reward": 1.0, "done": True, "duration_s": 1.0, "outcome": {"success": 1}},
        {
            "reward": 1.0,
            "done": True,
            "duration_s": 1.0,
            "outcome": {"success": True, "sensed_by": "", "detail": {}},
        },
        {
            "reward": 1.0,
            "done": True,
            "duration_s": 1.0,
            "outcome": {"success": True, "sensed_by": "x", "detail": {"a": "b"}},
        },
    ],
    ids=["done-without-outcome", "done-not-bool", "bad-success", "empty-sensed-by", "bad-detail"],
)
def test_malformed_execute_reply_is_a_bridge_error(result: dict[str, Any]) -> None:
    with pytest.raises(proto.BridgeError):
        proto.parse_step_result(reply(result))


def test_observation_of_the_wrong_shape_is_a_bridge_error() -> None:
    fields, arrays = proto.observation_result(Observation(np.zeros((32, 32, 3), np.uint8), 0, 1.0))
    with pytest.raises(proto.BridgeError, match="image must be uint8"):
        proto.parse_observation(reply(fields, arrays), DEFAULT_SPEC)


@pytest.mark.parametrize(
    "action",
    [np.zeros(2, np.float32), np.zeros(3, np.int32), np.array([np.nan, 0, 0], np.float32)],
    ids=["short", "int", "nan"],
)
def test_bad_action_is_refused(action: np.ndarray) -> None:
    msg = decode(proto.request("execute", "x", {"session": "s"}, {"action": action}))
    with pytest.raises(ValueError):
        proto.parse_action(msg, DEFAULT_SPEC)


def test_action_is_clipped() -> None:
    msg = decode(proto.request("execute", "x", {}, {"action": np.full(3, 5.0, np.float32)}))
    assert proto.parse_action(msg, DEFAULT_SPEC).tolist() == [1.0, 1.0, 1.0]


def test_unknown_operation_and_malformed_reply() -> None:
    with pytest.raises(ValueError, match="unknown bridge operation 'dance'"):
        proto.request("dance", "x")
    assert proto.reply_error(decode(proto.error_reply("x", "busy", "m"))) == ("busy", "m")
    with pytest.raises(proto.BridgeError):
        proto.reply_error(decode(encode("reply", {"id": "x", "ok": "maybe"})))
