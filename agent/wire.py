"""The versioned multipart wire envelope shared by the command socket and the trainer link.

A message is a list of ZeroMQ frames. Frame 0 is a UTF-8 JSON object, the
header, with at least ``{"v": 1, "type": "<name>"}``. Array payloads travel as
raw frames after the header, each described in ``header["arrays"]`` as
``{"name": ..., "dtype": ..., "shape": [...]}`` in frame order. No pickle:
only the dtypes in :data:`ALLOWED_DTYPES` are accepted, and every size is
checked against the declared shape and the message cap before anything is
built. This module is pure: bytes in, bytes out, no sockets.

Caps (all refusals are ``too_large``): frame 0 at most ``max_header_bytes`` (64 KiB by
default), the whole message at most ``max_bytes`` (16 MiB by default), at most 64 array
frames; headers nest at most 32 deep (``bad_json``). :data:`ERROR_CODES` lists every error
code a peer can receive.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Default cap on the total size of a message (all frames); the command socket uses a lower
one, ``sockets.max_message_bytes``."""
MAX_HEADER_BYTES = 64 * 1024
"""Default cap on the JSON header frame (frame 0) of a request; replies may use a larger one."""
MAX_ARRAYS = 64
"""Cap on the number of array frames in one message."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of JSON arrays/objects accepted in a header (deeper is ``bad_json``)."""

ERROR_CODES: dict[str, str] = {
    # envelope (agent.wire)
    "empty": "the message has no frames",
    "bad_json": "frame 0 is not UTF-8 JSON (or nests deeper than 32, or holds NaN/Infinity)",
    "bad_header": "frame 0 is JSON but not an object, or uses a reserved field",
    "bad_version": 'header field "v" is missing or not the integer 1 (true, 1.0, "1" are refused)',
    "bad_type": 'header field "type" is missing, empty, or not the type this socket expects',
    "bad_arrays": '"arrays" is malformed or disagrees with the number of frames that follow',
    "bad_shape": "an array frame's length disagrees with its declared dtype and shape",
    "bad_dtype": "an array dtype outside the allowed set (no object dtypes, no pickle)",
    "too_large": "a header frame or a whole message over its cap",
    # requests (agent.commands)
    "bad_request": 'header fields missing, unknown, or of the wrong type ("id", "command")',
    "unknown_command": "no command of that name",
    "bad_args": "arguments missing, unknown, not strings, or not matching the command's schema",
    "conflict": "the command is valid but the agent's state does not allow it now",
    "not_found": "the policy, condition or job named does not exist",
    "internal": "the command failed unexpectedly (logged with a traceback on the daemon)",
    # command socket (agent.transport)
    "rate_limited": "the client sent more requests than its token bucket allows; retry later",
}
"""Every error code a peer can receive, with its meaning: the one list in code (docs/agent.md
carries the same table)."""
ALLOWED_DTYPES = frozenset(
    {"uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64", "bool"}
)


class WireError(ValueError):
    """A message broke the envelope contract; ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Message:
    """A decoded message: its type, the rest of its header, and its named arrays."""

    type: str
    """Message type, e.g. ``"command"`` or ``"reply"``."""
    header: dict[str, Any] = field(default_factory=dict)
    """Header fields other than ``v``, ``type`` and ``arrays``."""
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    """Array payloads by name (read-only views over the received frames)."""


def encode(
    type_: str,
    header: Mapping[str, Any] | None = None,
    arrays: Mapping[str, npt.NDArray[Any]] | None = None,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> list[bytes]:
    """Build the frames of one message; raises WireError if it would break the contract."""
    if not type_ or not isinstance(type_, str):
        raise WireError("bad_type", "message type must be a non-empty string")
    head: dict[str, Any] = {k: v for k, v in (header or {}).items()}
    for reserved in ("v", "type", "arrays"):
        if reserved in head:
            raise WireError("bad_header", f"header field {reserved!r} is reserved")
    frames: list[bytes] = []
    descs: list[dict[str, Any]] = []
    for name, arr in (arrays or {}).items():
        a = np.ascontiguousarray(arr)
        if a.dtype.name not in ALLOWED_DTYPES:
            raise WireError("bad_dtype", f"array {name!r}: dtype {a.dtype} not allowed")
        descs.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
        frames.append(a.tobytes())
    head["v"] = WIRE_VERSION
    head["type"] = type_
    if descs:
        head["arrays"] = descs
    try:
        raw = json.dumps(head, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise WireError("bad_header", f"header is not JSON-serialisable: {exc}") from exc
    total = len(raw) + sum(len(f) for f in frames)
    if len(raw) > max_header_bytes:
        raise WireError("too_large", f"header of {len(raw)} bytes exceeds {max_header_bytes}")
    if total > max_bytes:
        raise WireError("too_large", f"message of {total} bytes exceeds the cap of {max_bytes}")
    return [raw, *frames]


def decode(
    frames: Sequence[bytes],
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> Message:
    """Parse and strictly validate the frames of one message; raises WireError on any fault.

    Sizes are checked before anything is parsed: the whole message against ``max_bytes``,
    frame 0 against ``max_header_bytes`` (both ``too_large``).
    """
    if not frames:
        raise WireError("empty", "message has no frames")
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        raise WireError("too_large", f"message of {total} bytes exceeds the cap of {max_bytes}")
    raw = bytes(frames[0])
    if len(raw) > max_header_bytes:
        raise WireError("too_large", f"header of {len(raw)} bytes exceeds {max_header_bytes}")
    try:
        # RecursionError: json's parser gives up at a depth of about 1,000 (a 2 KB header).
        head = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise WireError("bad_json", f"header is not valid JSON: {exc}") from exc
    if _depth(head) > MAX_JSON_DEPTH:
        raise WireError("bad_json", f"header nests deeper than {MAX_JSON_DEPTH}")
    if not isinstance(head, dict):
        raise WireError("bad_header", "header must be a JSON object")
    v = head.pop("v", None)
    # bool is an int subclass and 1.0 == 1: only the integer 1 itself is version 1.
    if type(v) is not int or v != WIRE_VERSION:
        raise WireError("bad_version", f"unsupported wire version {v!r}; this end speaks 1")
    type_ = head.pop("type", None)
    if not isinstance(type_, str) or not type_:
        raise WireError("bad_type", "header field 'type' must be a non-empty string")
    descs = head.pop("arrays", [])
    if not isinstance(descs, list) or len(descs) > MAX_ARRAYS:
        raise WireError("bad_arrays", f"'arrays' must be a list of at most {MAX_ARRAYS}")
    if len(descs) != len(frames) - 1:
        raise WireError(
            "bad_arrays", f"header describes {len(descs)} arrays but {len(frames) - 1} follow"
        )
    arrays: dict[str, npt.NDArray[Any]] = {}
    for desc, frame in zip(descs, frames[1:], strict=True):
        name, arr = _decode_array(desc, frame)
        if name in arrays:
            raise WireError("bad_arrays", f"duplicate array name {name!r}")
        arrays[name] = arr
    return Message(type=type_, header=head, arrays=arrays)


def peek_field(
    frames: Sequence[bytes], key: str, *, max_header_bytes: int = MAX_HEADER_BYTES
) -> int | str | None:
    """Field ``key`` of a refused message's header, when the header is a JSON object within
    the caps and the field an int or a string (else None), so that an error reply (e.g.
    ``bad_version``) can still echo the request's id."""
    if not frames or len(frames[0]) > max_header_bytes:
        return None
    try:
        head = json.loads(bytes(frames[0]).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(head, dict) or _depth(head) > MAX_JSON_DEPTH:
        return None
    value = head.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    return value


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict | list):
            d += 1
            deepest = max(deepest, d)
            stack.extend((c, d) for c in (o.values() if isinstance(o, dict) else o))
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite JSON constant {name}")


def _decode_array(desc: Any, frame: bytes) -> tuple[str, npt.NDArray[Any]]:
    if not isinstance(desc, dict):
        raise WireError("bad_arrays", "array descriptor must be an object")
    name, dtype, shape = desc.get("name"), desc.get("dtype"), desc.get("shape")
    if not isinstance(name, str) or not name:
        raise WireError("bad_arrays", "array descriptor needs a non-empty 'name'")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise WireError("bad_dtype", f"array {name!r}: dtype {dtype!r} not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise WireError("bad_shape", f"array {name!r}: shape must be a list of <= 8 naturals")
    dt = np.dtype(dtype)
    expected = math.prod(shape) * dt.itemsize
    if expected != len(frame):
        raise WireError(
            "bad_shape", f"array {name!r}: {len(frame)} bytes but {dtype}{shape} needs {expected}"
        )
    arr = np.frombuffer(bytes(frame), dtype=dt).reshape(shape)
    return name, arr
