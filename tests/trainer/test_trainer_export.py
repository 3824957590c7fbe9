"""ONNX export round trip and bundle checks for the trainer's Q-network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from agent.bundle import validate_bundle
from agent.bundle_errors import BundleError
from agent.spec import ONNX_ACTIONS_INPUT, ONNX_IMAGE_INPUT, ONNX_Q_OUTPUT
from trainer.export import export_onnx, load_qnet, load_weights, make_bundle, weights_bytes
from trainer.qnet import PixelMapping, QNet, QNetConfig

torch.set_num_threads(1)


def _trained_looking_net() -> QNet:
    """A net whose BatchNorm statistics are not the identity (as after training)."""
    torch.manual_seed(0)
    net = QNet()
    net.train()
    with torch.no_grad():
        for _ in range(3):
            imgs = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8)
            net(imgs, torch.rand(8, 2, 3) * 2 - 1)
    return net.eval()


def test_onnx_matches_torch_eval_for_several_n() -> None:
    net = _trained_looking_net()
    sess = ort.InferenceSession(export_onnx(net), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for n in (1, 7, 64, 128):
        actions = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        (q,) = sess.run([ONNX_Q_OUTPUT], {ONNX_IMAGE_INPUT: image, ONNX_ACTIONS_INPUT: actions})
        with torch.no_grad():
            ref = net(torch.from_numpy(image)[None], torch.from_numpy(actions)[None])[0].numpy()
        assert q.shape == (n,) and q.dtype == np.float32
        np.testing.assert_allclose(q, ref, atol=1e-5, rtol=0)


def test_trunk_is_shared_across_actions() -> None:
    """Scoring actions one by one or all together gives the same Q (no cross-talk)."""
    net = _trained_looking_net()
    image = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    actions = torch.rand(1, 5, 3) * 2 - 1
    with torch.no_grad():
        together = net(image, actions)[0]
        alone = torch.stack([net(image, actions[:, i : i + 1])[0, 0] for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


def test_weights_round_trip_through_safetensors() -> None:
    net = _trained_looking_net()
    other = QNet().eval()
    load_weights(other, weights_bytes(net))
    image = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    actions = torch.rand(2, 3, 3) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(other(image, actions), net(image, actions))


def test_make_bundle_is_valid_and_tampering_is_rejected(tmp_path: Path) -> None:
    net = _trained_looking_net()
    bundle = make_bundle(net, {"condition": "baseline"}, tmp_path, parent_id="abc")
    assert bundle.parent_id == "abc"
    assert bundle.meta["network"]["type"] == "qnet"
    assert validate_bundle(bundle.path).id == bundle.id
    weights = bundle.weights_path.read_bytes()
    bundle.weights_path.write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    with pytest.raises(BundleError, match="sha256"):
        validate_bundle(bundle.path)


def test_bundle_meta_is_json_with_spec(tmp_path: Path) -> None:
    bundle = make_bundle(QNet(), {"condition": "baseline"}, tmp_path)
    meta = json.loads((bundle.path / "meta.json").read_text())
    assert meta["spec"]["image_shape"] == [64, 64, 3]
    assert meta["parent_id"] is None


def test_load_qnet_rebuilds_a_non_default_network_from_its_bundle(tmp_path: Path) -> None:
    cfg = QNetConfig(
        trunk_channels=(16, 32, 32),
        trunk_strides=(2, 2, 2),
        merge_channels=32,
        glimpse_channels=8,
        pixels=PixelMapping(half_width_m=0.3, half_height_m=0.3),
    )
    torch.manual_seed(1)
    net = QNet(cfg).eval()
    bundle = make_bundle(net, {"condition": "baseline"}, tmp_path)
    again = load_qnet(bundle).eval()
    assert again.config == cfg
    image = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    actions = torch.rand(1, 4, 3) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(again(image, actions), net(image, actions))
