"""Geometry of the Q-network's action-relative inputs (pixel mapping conventions)."""

from __future__ import annotations

import torch

from trainer.qnet import Encoded, PixelMapping, QNet, QNetConfig

torch.set_num_threads(1)


def _world_maps(h: int, w: int, pm: PixelMapping) -> torch.Tensor:
    xs = pm.centre_x_m + ((torch.arange(w) + 0.5) / w * 2 - 1) * pm.half_width_m
    ys = pm.centre_y_m - ((torch.arange(h) + 0.5) / h * 2 - 1) * pm.half_height_m
    return torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])[None]


def test_glimpse_samples_the_map_at_the_grasp_point_and_along_the_gripper_axis() -> None:
    pm = PixelMapping(half_width_m=0.3, half_height_m=0.25, centre_x_m=0.02, centre_y_m=-0.01)
    net = QNet(QNetConfig(glimpse_grid=3, glimpse_spacing_m=0.02, pixels=pm))
    maps = _world_maps(16, 16, pm)  # channel 0 = world x, channel 1 = world y of each cell
    actions = torch.tensor([[[0.5, -0.4, 0.5], [-0.2, 0.3, -0.25]]])
    out = net._glimpse(maps, actions).view(1, 2, 9, 2)
    for j, a in enumerate(actions[0]):
        gx, gy = float(a[0]) * 0.2, float(a[1]) * 0.15
        yaw = float(a[2]) * torch.pi / 2
        centre = out[0, j, 4]
        torch.testing.assert_close(centre, torch.tensor([gx, gy]), atol=1e-5, rtol=0)
        # Pattern index 7 is (u=+spacing, v=0): along the finger-closing axis.
        along = out[0, j, 7]
        want = torch.tensor(
            [gx + 0.02 * torch.cos(torch.tensor(yaw)), gy + 0.02 * torch.sin(torch.tensor(yaw))]
        )
        torch.testing.assert_close(along, want, atol=1e-5, rtol=0)


def test_pooling_blob_peaks_at_the_grasp_cell() -> None:
    net = QNet()
    maps, weights = net._spatial(torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]]))
    h, w = net.map_size
    # x = +0.20 m, y = +0.15 m: right edge, upper part of the default +-0.25 m image.
    peak = int(weights[0, 0].argmax())
    assert peak // w < h // 2 and peak % w >= w - 2
    peak = int(weights[1, 0].argmax())
    assert peak // w >= h // 2 and peak % w <= 1
    assert maps.shape == (2, 6, h, w)


def test_encoded_without_glimpse_still_scores() -> None:
    net = QNet(QNetConfig(glimpse_layer=-1)).eval()
    enc = net.encode(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    assert isinstance(enc, Encoded) and enc.glimpse is None
    assert net.logits_from(enc, torch.zeros(2, 5, 3)).shape == (2, 5)
