"""The versioned multipart wire envelope shared by the command socket and the trainer link.

A message is a list of ZeroMQ frames. Frame 0 is a UTF-8 JSON object, the
header, with at least ``{"v": 1, "type": "<name>"}``. Array payloads travel as
raw frames after the header, each described in ``header["arrays"]`` as
``{"name": ..., "dtype": ..., "shape": [...]}`` in frame order. No pickle:
only the dtypes in :data:`ALLOWED_DTYPES` are accepted, and every size is
checked against the declared shape and the message cap before anything is
built. This module is pure: bytes in, bytes out, no sockets.
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
"""Default cap on the total size of a message (all frames)."""
MAX_HEADER_BYTES = 64 * 1024
"""Cap on the JSON header frame."""
MAX_ARRAYS = 64
"""Cap on the number of array frames in one message."""
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
    except (TypeError, ValueError) as exc:
        raise WireError("bad_header", f"header is not JSON-serialisable: {exc}") from exc
    total = len(raw) + sum(len(f) for f in frames)
    if len(raw) > MAX_HEADER_BYTES or total > max_bytes:
        raise WireError("too_large", f"message of {total} bytes exceeds the cap of {max_bytes}")
    return [raw, *frames]


def decode(frames: Sequence[bytes], *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse and strictly validate the frames of one message; raises WireError on any fault."""
    if not frames:
        raise WireError("empty", "message has no frames")
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        raise WireError("too_large", f"message of {total} bytes exceeds the cap of {max_bytes}")
    raw = bytes(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError("too_large", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        head = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise WireError("bad_json", f"header is not valid JSON: {exc}") from exc
    if not isinstance(head, dict):
        raise WireError("bad_header", "header must be a JSON object")
    v = head.pop("v", None)
    if v != WIRE_VERSION:
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
