"""Policy bundles: one directory per policy, id = content hash. Shared by agent and trainer.

Layout::

    <dir>/model.onnx            image uint8 [H,W,3], actions float32 [N,A] -> q float32 [N]
    <dir>/weights.safetensors   torch state for the trainer to continue the lineage
    <dir>/meta.json             id, parent_id, condition, spec, training, data, validation, files

``meta["files"]`` maps each file name to its sha256. The id is the sha256 of
the model and weights hashes (so identical weights give identical ids).
:func:`validate_bundle` is the one check both sides run before using a bundle.
No pickle: weights are safetensors, metadata JSON, the model ONNX.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.spec import (
    DEFAULT_SPEC,
    ONNX_ACTIONS_INPUT,
    ONNX_IMAGE_INPUT,
    ONNX_Q_OUTPUT,
    Spec,
)

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
BUNDLE_FORMAT = 1
MAX_MODEL_BYTES = 256 * 1024 * 1024


class BundleError(ValueError):
    """A bundle failed validation; the message says which check and why."""


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{bid}.", dir=dest_root))
    try:
        for name, data in (
            (MODEL_FILE, model_onnx),
            (WEIGHTS_FILE, weights_safetensors),
            (META_FILE, json.dumps(full, indent=2, sort_keys=True).encode()),
        ):
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_meta(path: Path) -> dict[str, Any]:
    """Parse meta.json of a bundle directory; raises BundleError if missing or malformed."""
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_path}: unreadable meta.json: {exc}") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: meta.json is not an object")
    return meta


def validate_bundle(
    path: Path | str, spec: Spec = DEFAULT_SPEC, *, run_inference: bool = True
) -> Bundle:
    """Check a bundle and return it, or raise BundleError naming the failed check.

    Checks: meta.json fields; sha256 of every file; the id matches the content;
    the spec matches ``spec``; ``onnx.checker``; graph input/output names,
    dtypes and ranks; and (``run_inference``) a CPU test inference on a grey
    image and 8 candidate actions giving finite Q-values in [0, 1].
    """
    import onnx

    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory")
    meta = read_meta(path)
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: unsupported bundle format {meta.get('format')!r}")
    files = meta.get("files")
    if not isinstance(files, dict) or set(files) != {MODEL_FILE, WEIGHTS_FILE}:
        raise BundleError(f"{path}: meta.files must list {MODEL_FILE} and {WEIGHTS_FILE}")
    for name, expected in files.items():
        fpath = path / name
        if not fpath.is_file():
            raise BundleError(f"{path}: missing {name}")
        if fpath.stat().st_size > MAX_MODEL_BYTES:
            raise BundleError(f"{path}: {name} larger than {MAX_MODEL_BYTES} bytes")
        actual = sha256_file(fpath)
        if actual != expected:
            raise BundleError(f"{path}: sha256 mismatch for {name} (tampered or corrupt)")
    bid = bundle_id(files[MODEL_FILE], files[WEIGHTS_FILE])
    if meta.get("id") != bid:
        raise BundleError(f"{path}: id {meta.get('id')!r} does not match content hash {bid}")
    try:
        bspec = Spec.from_dict(meta["spec"])
    except (KeyError, ValueError) as exc:
        raise BundleError(f"{path}: bad spec in meta.json: {exc}") from exc
    if bspec != spec:
        raise BundleError(f"{path}: spec {bspec.to_dict()} differs from expected {spec.to_dict()}")
    try:
        model = onnx.load(str(path / MODEL_FILE))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise BundleError(f"{path}: onnx.checker failed: {exc}") from exc
    _check_io(model, spec, path)
    if run_inference:
        _test_inference(path / MODEL_FILE, spec, path)
    parent = meta.get("parent_id")
    return Bundle(
        path=path,
        id=bid,
        parent_id=str(parent) if parent else None,
        meta=meta,
        spec=bspec,
    )


def _check_io(model: Any, spec: Spec, path: Path) -> None:
    import onnx

    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    want = {
        ONNX_IMAGE_INPUT: (onnx.TensorProto.UINT8, 3),
        ONNX_ACTIONS_INPUT: (onnx.TensorProto.FLOAT, 2),
    }
    for name, (dtype, rank) in want.items():
        if name not in inputs:
            raise BundleError(f"{path}: model has no input {name!r} (has {sorted(inputs)})")
        t = inputs[name].type.tensor_type
        if t.elem_type != dtype or len(t.shape.dim) != rank:
            raise BundleError(f"{path}: input {name!r} must be rank {rank} of type {dtype}")
    img_dims = [d.dim_value for d in inputs[ONNX_IMAGE_INPUT].type.tensor_type.shape.dim]
    if tuple(img_dims) != spec.image_shape:
        raise BundleError(f"{path}: image input shape {img_dims} != spec {spec.image_shape}")
    act_dim = inputs[ONNX_ACTIONS_INPUT].type.tensor_type.shape.dim[1].dim_value
    if act_dim != spec.action_dim:
        raise BundleError(f"{path}: actions input width {act_dim} != spec {spec.action_dim}")
    if set(outputs) != {ONNX_Q_OUTPUT}:
        raise BundleError(f"{path}: model outputs {sorted(outputs)} must be [{ONNX_Q_OUTPUT!r}]")


def _test_inference(model_path: Path, spec: Spec, path: Path) -> None:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        image = np.full(spec.image_shape, 128, dtype=np.uint8)
        rng = np.random.default_rng(0)
        actions = rng.uniform(spec.low, spec.high, size=(8, spec.action_dim)).astype(np.float32)
        (q,) = sess.run([ONNX_Q_OUTPUT], {ONNX_IMAGE_INPUT: image, ONNX_ACTIONS_INPUT: actions})
    except Exception as exc:
        raise BundleError(f"{path}: test inference failed: {exc}") from exc
    q = np.asarray(q)
    if q.shape != (8,):
        raise BundleError(f"{path}: test inference gave shape {q.shape}, expected (8,)")
    if not np.all(np.isfinite(q)) or q.min() < 0.0 or q.max() > 1.0:
        raise BundleError(f"{path}: test inference gave Q outside [0, 1] or non-finite")
