"""Policy bundles: one directory per policy, id = content hash. Shared by agent and trainer.

Layout (exactly these three regular files, nothing else)::

    <dir>/model.onnx            image uint8 [H,W,3], actions float32 [N,A] -> q float32 [N]
    <dir>/weights.safetensors   torch state for the trainer to continue the lineage
    <dir>/meta.json             id, parent_id, condition, spec, training, data, validation, files

``meta["files"]`` maps each of the two payload files to its sha256; the id is
the sha256 of those two hashes, so every byte a policy serves from is covered
by its id. Tensor data stored outside ``model.onnx`` ("external data") is
refused outright. :func:`validate_bundle` is the one check both sides run
before using a bundle; every refusal is a :class:`agent.bundle_errors.BundleError` whose
``reason`` is one of its ``REASONS``; the model checks are :mod:`agent.onnxcheck`.
No pickle: weights are safetensors, metadata JSON, the model ONNX.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.bundle_errors import BundleError
from agent.onnxcheck import PROBE_ACTION_COUNTS, check_model, probe_images, probe_model
from agent.spec import (
    DEFAULT_SPEC,
    Spec,
)
from plumbing import names
from plumbing.atomic import replacing_dir
from plumbing.digest import sha256_file as sha256_file

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"
BUNDLE_FILES = frozenset({MODEL_FILE, WEIGHTS_FILE, META_FILE})
BUNDLE_FORMAT = 1
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
"""Default cap on the total size of a bundle directory (``policy.max_bundle_bytes``)."""
MAX_MODEL_BYTES = MAX_BUNDLE_BYTES  # the name older callers use
MAX_META_BYTES = 1024 * 1024


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
