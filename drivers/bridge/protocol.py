"""The robot bridge protocol, version 1: message builders and parsers (pure, no sockets).

Every message is an :mod:`agent.wire` envelope (JSON header ``{"v": 1, "type": ...}``
plus raw array frames). The agent (a DEALER) sends requests whose type is the
operation (:data:`OPERATIONS`) and whose header carries a request ``id`` and, for
everything but ``hello`` and ``heartbeat``, the bridge ``session`` it was given
by ``hello``. The bridge (a ROUTER) answers each with one ``reply``
(``{"id", "ok": true, "result": {...}}`` or ``{"id", "ok": false, "error":
{"code", "message"}}``) and, while a request is still running, a ``heartbeat``
(``{"id", "busy", "elapsed_s"}``) every ``heartbeat_s``. See docs/bridge.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.driver import GraspOutcome, Observation, StepResult
from agent.spec import Spec
from agent.wire import Message, WireError, encode

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change; ``hello`` refuses a mismatch."""

OPERATIONS = ("hello", "heartbeat", "observe", "execute", "home", "stop", "shuffle", "reset")
"""Request types a bridge understands."""
OPTIONAL_OPERATIONS = ("shuffle", "reset")
"""Operations a bridge may lack; ``hello`` lists those it has in ``capabilities``."""

ERROR_CODES = (
    "bad_request",  # malformed message or fields (wire codes are passed through too)
    "bad_protocol",  # protocol version mismatch
    "bad_action",  # wrong shape, NaN: nothing moved
    "stale_session",  # the request names another bridge session (the bridge restarted)
    "busy",  # another request is still running on the robot
    "unavailable",  # the robot refuses or cannot be reached by the bridge (e-stop, fault)
    "unsupported",  # an optional operation this bridge does not offer
    "internal",  # the integrator's callback raised
)


class BridgeError(RuntimeError):
    """The bridge answered with an error the agent cannot fix by retrying later."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"bridge error {code}: {message}")
        self.code = code
        self.message = message


def request(
    op: str,
    req_id: str,
    fields: Mapping[str, Any] | None = None,
    arrays: Mapping[str, npt.NDArray[Any]] | None = None,
    max_bytes: int | None = None,
) -> list[bytes]:
    """Frames of one request; ``op`` must be one of :data:`OPERATIONS`."""
    if op not in OPERATIONS:
        raise ValueError(f"unknown bridge operation {op!r}; allowed: {', '.join(OPERATIONS)}")
    head = {"id": req_id, **(fields or {})}
    if max_bytes is None:
        return encode(op, head, arrays)
    return encode(op, head, arrays, max_bytes=max_bytes)


def ok_reply(
    req_id: str | None,
    result: Mapping[str, Any] | None = None,
    arrays: Mapping[str, npt.NDArray[Any]] | None = None,
) -> list[bytes]:
    """Frames of a successful reply."""
    return encode("reply", {"id": req_id, "ok": True, "result": dict(result or {})}, arrays)


def error_reply(req_id: str | None, code: str, message: str) -> list[bytes]:
    """Frames of an error reply."""
    err = {"code": code, "message": message[:2000]}
    return encode("reply", {"id": req_id, "ok": False, "error": err})


def heartbeat(req_id: str | None, busy: str | None, elapsed_s: float) -> list[bytes]:
    """Frames of a bridge heartbeat: request ``req_id`` is still running."""
    return encode("heartbeat", {"id": req_id, "busy": busy, "elapsed_s": round(elapsed_s, 4)})


def reply_error(msg: Message) -> tuple[str, str] | None:
    """(code, message) of an error reply, None for a successful one; BridgeError if malformed."""
    ok = msg.header.get("ok")
    if ok is True:
        if not isinstance(msg.header.get("result"), dict):
            raise BridgeError("bad_request", "reply without a result object")
        return None
    err = msg.header.get("error")
    if ok is not False or not isinstance(err, dict):
        raise BridgeError("bad_request", f"malformed reply header {msg.header!r}")
    return str(err.get("code", "internal")), str(err.get("message", ""))


# -- payloads ---------------------------------------------------------------------------------


def observation_result(obs: Observation) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Result fields and arrays of an ``observe`` reply."""
    return {"step": obs.step, "timestamp": obs.timestamp}, {"image": obs.image}


def parse_observation(msg: Message, spec: Spec) -> Observation:
    """The Observation of an ``observe`` reply; BridgeError on a wrong image or field."""
    res = msg.header["result"]
    image = msg.arrays.get("image")
    if image is None:
        raise BridgeError("bad_request", "observe reply carries no 'image' array")
    try:
        spec.check_image(image)
    except ValueError as exc:
        raise BridgeError("bad_request", f"observe reply: {exc}") from exc
    step, ts = res.get("step", 0), res.get("timestamp")
    if not isinstance(step, int) or not _is_number(ts):
        raise BridgeError("bad_request", f"observe reply: bad step/timestamp in {res!r}")
    return Observation(image=image, step=step, timestamp=float(ts))


def step_result(result: StepResult) -> dict[str, Any]:
    """Result fields of an ``execute`` reply."""
    out = result.outcome
    return {
        "reward": result.reward,
        "done": result.done,
        "duration_s": result.duration_s,
        "outcome": None
        if out is None
        else {
            "success": out.success,
            "sensed_by": out.sensed_by,
            "detail": {k: float(v) for k, v in out.detail.items() if math.isfinite(float(v))},
        },
    }


def parse_step_result(msg: Message) -> StepResult:
    """The StepResult of an ``execute`` reply; BridgeError on a missing or bad field."""
    res = msg.header["result"]
    reward, done, dur, out = (res.get(k) for k in ("reward", "done", "duration_s", "outcome"))
    if not _is_number(reward) or not isinstance(done, bool) or not _is_number(dur):
        raise BridgeError("bad_request", f"execute reply: bad reward/done/duration_s in {res!r}")
    outcome: GraspOutcome | None = None
    if out is not None:
        if (
            not isinstance(out, dict)
            or not isinstance(out.get("success"), bool)
            or not isinstance(out.get("sensed_by"), str)
            or not out["sensed_by"]
            or not isinstance(out.get("detail", {}), dict)
            or not all(_is_number(v) for v in out.get("detail", {}).values())
        ):
            raise BridgeError("bad_request", f"execute reply: bad outcome {out!r}")
        detail = {str(k): float(v) for k, v in out.get("detail", {}).items()}
        outcome = GraspOutcome(out["success"], out["sensed_by"], detail)
    if done and outcome is None:
        raise BridgeError("bad_request", "execute reply: done without an outcome")
    return StepResult(reward=float(reward), done=done, outcome=outcome, duration_s=float(dur))


def parse_action(msg: Message, spec: Spec) -> npt.NDArray[np.float32]:
    """The clipped normalised action of an ``execute`` request; ValueError if malformed."""
    a = msg.arrays.get("action")
    if a is None:
        raise ValueError("execute needs an 'action' array")
    if a.shape != (spec.action_dim,) or a.dtype.kind != "f":
        raise ValueError(f"action must be float[{spec.action_dim}], got {a.dtype}{list(a.shape)}")
    return spec.clip_action(a)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


__all__ = [
    "ERROR_CODES",
    "OPERATIONS",
    "PROTOCOL_VERSION",
    "BridgeError",
    "WireError",
    "error_reply",
    "heartbeat",
    "ok_reply",
    "parse_action",
    "parse_observation",
    "parse_step_result",
    "reply_error",
    "request",
    "step_result",
]
