"""Policy bundles: one directory per policy, id = content hash. Shared by agent and trainer.

Layout (exactly these three regular files, nothing else)::

    <dir>/model.onnx            image uint8 [H,W,3], actions float32 [N,A] -> q float32 [N]
    <dir>/weights.safetensors   torch state for the trainer to continue the lineage
    <dir>/meta.json             id, parent_id, condition, spec, training, data, validation, files

``meta["files"]`` maps each of the two payload files to its sha256; the id is
the sha256 of those two hashes, so every byte a policy serves from is covered
by its id. Tensor data stored outside ``model.onnx`` ("external data") is
refused outright. :func:`validate_bundle` is the one check both sides run
before using a bundle; every refusal is a :class:`BundleError` whose
``reason`` is one of :data:`REASONS`. No pickle: weights are safetensors,
metadata JSON, the model ONNX.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.spec import (
    DEFAULT_SPEC,
    ONNX_ACTIONS_INPUT,
    ONNX_IMAGE_INPUT,
    ONNX_Q_OUTPUT,
    Spec,
)
from plumbing import names
from plumbing.atomic import replacing_dir

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
BUNDLE_FILES = frozenset({MODEL_FILE, WEIGHTS_FILE, META_FILE})
BUNDLE_FORMAT = 1
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
"""Default cap on the total size of a bundle directory (``policy.max_bundle_bytes``)."""
MAX_MODEL_BYTES = MAX_BUNDLE_BYTES  # the name older callers use
MAX_META_BYTES = 1024 * 1024
ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})
"""Operator domains a served graph may use: the standard ONNX operators only."""
PROBE_ACTION_COUNTS = (1, 7, 64)
"""Candidate counts the probe inference runs with (CEM's own count is added)."""

REASONS: dict[str, str] = {
    "not_a_directory": "the bundle path is not a directory",
    "bad_meta": "meta.json missing, unreadable, not an object, or a required field is wrong",
    "unlisted_file": "the directory holds a file or folder that is not part of a bundle",
    "symlink": "an entry of the directory is a symbolic link (or not a regular file)",
    "missing_file": "model.onnx or weights.safetensors is missing",
    "too_large": "the bundle is larger than policy.max_bundle_bytes (checked before copying)",
    "hash_mismatch": "a file's sha256 differs from meta.files",
    "id_mismatch": "meta.id is not the content hash of the files",
    "tampered": "the content does not match the bundle with the same id already in the store",
    "spec_mismatch": "meta.spec differs from the agent's observation/action spec",
    "onnx_invalid": "model.onnx does not parse or fails onnx.checker (full check)",
    "external_data": "the model refers to tensor data outside model.onnx",
    "bad_domain": "the model uses an operator domain other than the standard one",
    "bad_input": "graph inputs are not exactly image uint8 [H,W,3] and actions float32 [N,A]",
    "bad_output": "graph outputs are not exactly q float32 [N]",
    "probe_failed": "the probe inference raised an error",
    "bad_output_shape": "the probe inference returned a q of the wrong shape or dtype",
    "non_finite": "the probe inference returned NaN or infinite Q",
    "out_of_range": "the probe inference returned Q outside [0, 1]",
    "load_failed": "ONNX Runtime could not open or warm the model",
    "too_slow": "a served decision is slower than the latency limit",
    "io_error": "the bundle could not be read or copied (permissions, disk full)",
    "internal": "an unexpected error while checking the bundle",
}
"""Every reason code a bundle can be refused with, and what it means."""


class BundleError(ValueError):
    """A bundle failed validation; ``reason`` is a code from :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason if reason in REASONS else "internal"
        self.content_id = ""
        """The id the refused bytes were proven to hash to ('' when refused before or at the
        hash check): only a refusal under this id may be recorded against the id."""


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk."""

    path: Path
    id: str
    parent_id: str | None
    meta: dict[str, Any]
    spec: Spec

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_id(model_sha: str, weights_sha: str) -> str:
    """Content id of a bundle: first 16 hex of sha256(model_sha + weights_sha)."""
    return hashlib.sha256(f"{model_sha}:{weights_sha}".encode()).hexdigest()[:16]


def is_bundle_id(text: str) -> bool:
    """True for a well-formed bundle id (16 lower-case hex digits): safe as a file name."""
    return names.is_bundle_id(text)


def write_bundle(
    dest_root: Path,
    model_onnx: bytes,
    weights_safetensors: bytes,
    meta: dict[str, Any],
    spec: Spec = DEFAULT_SPEC,
) -> Path:
    """Write a bundle under ``dest_root/<id>`` atomically and return its path.

    ``meta`` supplies parent_id, condition, training, data, validation; id,
    spec, format and file hashes are filled in here. An existing bundle with
    the same id is left as is (content-addressed).
    """
    dest_root.mkdir(parents=True, exist_ok=True)
    model_sha = hashlib.sha256(model_onnx).hexdigest()
    weights_sha = hashlib.sha256(weights_safetensors).hexdigest()
    bid = bundle_id(model_sha, weights_sha)
    final = dest_root / bid
    if final.exists():
        return final
    full = dict(meta)
    full.update(
        {
            "format": BUNDLE_FORMAT,
            "id": bid,
            "parent_id": meta.get("parent_id"),
            "spec": spec.to_dict(),
            "files": {MODEL_FILE: model_sha, WEIGHTS_FILE: weights_sha},
        }
    )
    with replacing_dir(final) as tmp:  # fsyncs every file before the rename
        for name, data in (
            (MODEL_FILE, model_onnx),
            (WEIGHTS_FILE, weights_safetensors),
            (META_FILE, json.dumps(full, indent=2, sort_keys=True).encode()),
        ):
            (tmp / name).write_bytes(data)
    return final


# -- cheap checks: directory listing, sizes, meta, hashes (no file is opened but meta.json) ----


def scan_bundle_dir(path: Path, max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, int]:
    """Sizes of a bundle directory's files from ``lstat`` alone (nothing is read).

    Raises BundleError: ``not_a_directory``; ``symlink`` for a link or a
    non-regular entry; ``unlisted_file`` for a name outside the layout;
    ``too_large`` when the total passes ``max_bytes`` or meta.json passes 1 MiB.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError("not_a_directory", f"{path}: not a directory")
    sizes: dict[str, int] = {}
    with os.scandir(path) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise BundleError("symlink", f"{path}: {entry.name} is a symbolic link")
            if entry.name not in BUNDLE_FILES:
                raise BundleError(
                    "unlisted_file",
                    f"{path}: unexpected entry {entry.name!r}; a bundle holds only "
                    + ", ".join(sorted(BUNDLE_FILES)),
                )
            if not stat.S_ISREG(st.st_mode):
                raise BundleError("symlink", f"{path}: {entry.name} is not a regular file")
            sizes[entry.name] = st.st_size
    total = sum(sizes.values())
    if total > max_bytes:
        raise BundleError("too_large", f"{path}: {total} bytes, more than the cap of {max_bytes}")
    if sizes.get(META_FILE, 0) > MAX_META_BYTES:
        raise BundleError("too_large", f"{path}: meta.json larger than {MAX_META_BYTES} bytes")
    return sizes


def read_meta(path: Path) -> dict[str, Any]:
    """Parse meta.json of a bundle directory; raises BundleError(``bad_meta``) if bad."""
    meta_path = Path(path) / META_FILE
    try:
        fd = os.open(meta_path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_META_BYTES + 1)
        if len(raw) > MAX_META_BYTES:
            raise BundleError("too_large", f"{meta_path}: larger than {MAX_META_BYTES} bytes")
        meta = json.loads(raw)
    except (OSError, ValueError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError("bad_meta", f"{meta_path}: unreadable meta.json: {exc}") from exc
    if not isinstance(meta, dict):
        raise BundleError("bad_meta", f"{meta_path}: meta.json is not an object")
    return meta


def check_meta(meta: dict[str, Any], spec: Spec, path: Path) -> tuple[str, dict[str, str], Spec]:
    """Check meta.json's fields; returns (id, files, spec); raises bad_meta or spec_mismatch."""
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError("bad_meta", f"{path}: unsupported bundle format {meta.get('format')!r}")
    bid = meta.get("id")
    if not isinstance(bid, str) or not is_bundle_id(bid):
        raise BundleError("bad_meta", f"{path}: meta.id {bid!r} is not 16 hex digits")
    parent = meta.get("parent_id")
    if parent is not None and not (isinstance(parent, str) and 0 < len(parent) <= 64):
        raise BundleError("bad_meta", f"{path}: meta.parent_id {parent!r} is not an id")
    files = meta.get("files")
    if (
        not isinstance(files, dict)
        or set(files) != {MODEL_FILE, WEIGHTS_FILE}
        or not all(names.is_sha256_hex(v) for v in files.values())
    ):
        raise BundleError(
            "bad_meta", f"{path}: meta.files must map {MODEL_FILE} and {WEIGHTS_FILE} to sha256"
        )
    try:
        bspec = Spec.from_dict(meta["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError("bad_meta", f"{path}: bad spec in meta.json: {exc}") from exc
    if bspec != spec:
        raise BundleError(
            "spec_mismatch", f"{path}: spec {bspec.to_dict()} differs from {spec.to_dict()}"
        )
    return bid, dict(files), bspec


def _layout_and_meta(
    path: Path, spec: Spec, max_bytes: int
) -> tuple[dict[str, Any], str, dict[str, str], Spec]:
    """Layout and size (lstat only), meta.json, the spec, both files present."""
    sizes = scan_bundle_dir(path, max_bytes)
    if META_FILE not in sizes:
        raise BundleError("bad_meta", f"{path}: no meta.json")
    meta = read_meta(path)
    bid, files, bspec = check_meta(meta, spec, path)
    for name in (MODEL_FILE, WEIGHTS_FILE):
        if name not in sizes:
            raise BundleError("missing_file", f"{path}: missing {name}")
    return meta, bid, files, bspec


def _check_id(path: Path, bid: str, files: dict[str, str]) -> None:
    actual = bundle_id(files[MODEL_FILE], files[WEIGHTS_FILE])
    if actual != bid:
        raise BundleError("id_mismatch", f"{path}: id {bid} does not match content hash {actual}")


def verify_bundle(
    path: Path | str, spec: Spec = DEFAULT_SPEC, *, max_bytes: int = MAX_BUNDLE_BYTES
) -> Bundle:
    """The hash-level checks alone: layout, size cap, meta fields, spec, sha256 of each file, id.

    For a bundle already validated into the store (e.g. the warm "last good"
    policy): proves it has not changed since, without the model checks.
    """
    path = Path(path)
    meta, bid, files, bspec = _layout_and_meta(path, spec, max_bytes)
    for name in (MODEL_FILE, WEIGHTS_FILE):
        if sha256_file(path / name) != files[name]:
            raise BundleError("hash_mismatch", f"{path}: sha256 of {name} differs from meta.files")
    _check_id(path, bid, files)
    parent = meta.get("parent_id")
    return Bundle(path=path, id=bid, parent_id=parent or None, meta=meta, spec=bspec)


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


def validate_bundle(
    path: Path | str,
    spec: Spec = DEFAULT_SPEC,
    *,
    run_inference: bool = True,
    images: Sequence[npt.NDArray[np.uint8]] = (),
    action_counts: Sequence[int] = PROBE_ACTION_COUNTS,
    max_bytes: int = MAX_BUNDLE_BYTES,
) -> Bundle:
    """Check a bundle and return it, or raise BundleError with a reason code.

    Checks, cheapest first: layout and total size from ``lstat`` (no symlink,
    no unlisted file, at most ``max_bytes``); meta.json; the spec; sha256 of
    each file and the id; the model (parsed from the very bytes that were
    hashed): no external data, standard operator domains only, declared
    inputs/outputs against the spec, ``onnx.checker`` full check; and
    (``run_inference``) a CPU probe on a grey, a noise and each of ``images``
    with every count in ``action_counts``: q float32 [N], finite, in [0, 1].
    Decision latency is checked where the policy is served (agent.loader). A refusal
    after the hash check carries the proven id in ``BundleError.content_id``.
    """
    path = Path(path)
    meta, bid, files, bspec = _layout_and_meta(path, spec, max_bytes)
    model_bytes = _read_regular(path / MODEL_FILE, max_bytes)
    if hashlib.sha256(model_bytes).hexdigest() != files[MODEL_FILE]:
        raise BundleError("hash_mismatch", f"{path}: sha256 of {MODEL_FILE} differs from meta")
    if sha256_file(path / WEIGHTS_FILE) != files[WEIGHTS_FILE]:
        raise BundleError("hash_mismatch", f"{path}: sha256 of {WEIGHTS_FILE} differs from meta")
    _check_id(path, bid, files)
    try:
        check_model(model_bytes, spec, path)
        if run_inference:
            counts = sorted(set(action_counts))
            probe_model(model_bytes, spec, probe_images(spec, images), counts, path)
    except BundleError as exc:  # these bytes are the bundle ``bid``: the refusal is its own
        exc.content_id = bid
        raise
    parent = meta.get("parent_id")
    return Bundle(path=path, id=bid, parent_id=parent or None, meta=meta, spec=bspec)


def _read_regular(path: Path, limit: int) -> bytes:
    """Read a regular file (never through a symlink) of at most ``limit`` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError("too_large", f"{path}: larger than {limit} bytes")
    return data


def copy_bundle_files(source: Path, dest: Path, max_bytes: int = MAX_BUNDLE_BYTES) -> None:
    """Copy a bundle's files (never through a symlink) into the empty directory ``dest``.

    Copies at most ``max_bytes`` in total (``too_large`` beyond: a file that
    grew after the size check) and fsyncs each file.
    """
    budget = max_bytes
    for name in sorted(BUNDLE_FILES):
        src = source / name
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue  # validation names what is missing
        except OSError as exc:
            raise BundleError("symlink", f"{src}: cannot open as a regular file: {exc}") from exc
        with os.fdopen(fd, "rb") as fin, open(dest / name, "wb") as fout:
            if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                raise BundleError("symlink", f"{src}: not a regular file")
            while chunk := fin.read(min(1 << 20, budget + 1)):
                budget -= len(chunk)
                if budget < 0:
                    raise BundleError("too_large", f"{source}: more than {max_bytes} bytes")
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
