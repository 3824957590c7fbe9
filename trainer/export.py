"""Export a Q-network to ONNX + safetensors and write a validated policy bundle.

The graph contract is the one in ``agent.spec``: input ``image`` uint8
``[H, W, 3]`` (raw camera pixels; normalisation is inside the graph), input
``actions`` float32 ``[N, 3]`` with N dynamic, output ``q`` float32 ``[N]`` in
[0, 1]. The trunk runs once per call and is broadcast over the N actions.
Weights travel as safetensors (never pickle).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from agent.bundle import Bundle, validate_bundle, write_bundle
from agent.spec import ONNX_ACTIONS_INPUT, ONNX_IMAGE_INPUT, ONNX_Q_OUTPUT
from trainer.qnet import PixelMapping, QNet, QNetConfig

OPSET = 17


class _ServingGraph(nn.Module):
    """One image [H, W, 3] and N actions [N, 3] -> q [N] (what the agent serves)."""

    def __init__(self, net: QNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor, actions: Tensor) -> Tensor:
        q: Tensor = self.net(image.unsqueeze(0), actions.unsqueeze(0))
        return q.squeeze(0)


def export_onnx(net: QNet) -> bytes:
    """Serialise ``net`` in eval mode to ONNX bytes following the agent's graph contract."""
    spec = net.spec
    was_training = net.training
    net.eval()
    image = torch.zeros(spec.image_shape, dtype=torch.uint8)
    actions = torch.zeros((8, spec.action_dim), dtype=torch.float32)
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            path = Path(tmp) / "model.onnx"
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _ServingGraph(net),
                (image, actions),
                path,
                input_names=[ONNX_IMAGE_INPUT, ONNX_ACTIONS_INPUT],
                output_names=[ONNX_Q_OUTPUT],
                dynamic_axes={ONNX_ACTIONS_INPUT: {0: "n"}, ONNX_Q_OUTPUT: {0: "n"}},
                opset_version=OPSET,
                dynamo=False,
            )
            return path.read_bytes()
    finally:
        net.train(was_training)


def weights_bytes(net: nn.Module) -> bytes:
    """State dict (parameters and BatchNorm buffers) as safetensors bytes."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return st_save(state)


def load_weights(net: nn.Module, data: bytes) -> None:
    """Load safetensors bytes written by :func:`weights_bytes` into ``net`` (strict)."""
    net.load_state_dict(st_load(data), strict=True)


def make_bundle(
    net: QNet, meta: dict[str, Any], dest_root: Path, parent_id: str | None = None
) -> Bundle:
    """Export ``net`` as a bundle under ``dest_root`` and return it validated.

    ``meta`` supplies condition, training, data and validation entries; the
    network config is recorded under ``meta["network"]``. Raises
    ``agent.bundle_errors.BundleError`` if the written bundle fails validation.
    """
    full = dict(meta)
    full["parent_id"] = parent_id
    full.setdefault("network", json.loads(json.dumps(_config_dict(net))))
    path = write_bundle(dest_root, export_onnx(net), weights_bytes(net), full, spec=net.spec)
    return validate_bundle(path, net.spec)


def _config_dict(net: QNet) -> dict[str, Any]:
    return {"type": "qnet", "config": asdict(net.config)}


def config_from_meta(meta: dict[str, Any]) -> QNetConfig:
    """The QNetConfig recorded in a bundle's ``meta["network"]``; ValueError if absent/bad."""
    try:
        net = meta["network"]
        if net.get("type") != "qnet":
            raise ValueError(f"network type {net.get('type')!r} is not 'qnet'")
        raw = dict(net["config"])
        raw["pixels"] = PixelMapping(**raw["pixels"])
        for key, value in raw.items():
            if isinstance(value, list):
                raw[key] = tuple(value)
        return QNetConfig(**raw)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"bad network entry in bundle meta: {exc!r}") from exc


def load_qnet(bundle: Bundle) -> QNet:
    """Rebuild the torch network of a validated bundle (config from meta, weights from disk)."""
    net = QNet(config_from_meta(bundle.meta), spec=bundle.spec)
    load_weights(net, bundle.weights_path.read_bytes())
    return net
