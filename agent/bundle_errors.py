"""Why a bundle is refused: every reason code, and the error that carries one.

Shared by the bundle checks (:mod:`agent.bundle`, :mod:`agent.onnxcheck`), the loader and
the trainer; the codes are the ``reason`` of a ``policy_rejected`` event.
"""

from __future__ import annotations

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
