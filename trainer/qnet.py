"""The QT-Opt Q-network, scaled to 64x64 images and cheap per candidate action.

Layout (QT-Opt: the action is merged into the conv trunk, then more layers, an
MLP head and a sigmoid)::

    image uint8 [B,H,W,3] -> /255 - 0.5 -> conv trunk (BatchNorm, ReLU) -> F [B,C,h,w]
    action [B,N,3] -> (x, y, sin yaw, cos yaw, sin 2yaw, cos 2yaw) -> MLP -> e [B,N,C]
    action [B,N,3] -> action-relative maps S [B,N,K,h,w] (offset of every cell from the grasp
                      point in image and gripper frames, a round and an oriented blob there)
    merged = ReLU(BN(F + e + W_s S))      (broadcast-add: the trunk runs once per image)
    merged -> 1x1 convs (per-cell MLP, BatchNorm, ReLU)
    -> [blob-weighted mean, global max, glimpse] -> MLP -> logit -> sigmoid

The glimpse samples a finer trunk map (16x16) bilinearly on a 3x3 pattern laid
out in the gripper frame around the grasp point: sub-cell precision and
orientation for 9 x 32 numbers per action.

The trunk is evaluated once per image and broadcast over the N candidate
actions; everything per action works on a small ``h x w`` map with 1x1 convs
only, so a CEM step of 64 actions costs little more than one trunk pass.
``W_s S`` is the 1x1 conv of the spatial maps: equivalent to concatenating
them to ``F`` before a 1x1 conv, but without materialising the concatenation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.spec import DEFAULT_SPEC, Spec


@dataclass(frozen=True)
class PixelMapping:
    """Where the top-down camera image lies in the cell frame (metres)."""

    half_width_m: float = 0.25
    """World metres from the image centre to its left/right edge (columns run +x)."""
    half_height_m: float = 0.25
    """World metres from the image centre to its top/bottom edge (row 0 is +y)."""
    centre_x_m: float = 0.0
    """World x of the image centre."""
    centre_y_m: float = 0.0
    """World y of the image centre."""

    @property
    def is_centred_square(self) -> bool:
        """True when flips and 90-degree rotations of the image are symmetries of the mapping."""
        return (
            self.centre_x_m == 0.0
            and self.centre_y_m == 0.0
            and math.isclose(self.half_width_m, self.half_height_m)
        )


@dataclass(frozen=True)
class QNetConfig:
    """Shape of the Q-network."""

    trunk_channels: tuple[int, ...] = (32, 64, 64, 64, 64)
    """Output channels of the image convs (the first is 5x5, the rest 3x3)."""
    trunk_strides: tuple[int, ...] = (2, 2, 2, 1, 1)
    """Stride of each image conv (64 -> 32 -> 16 -> 8 -> 8 -> 8 with the defaults)."""
    merge_channels: int = 64
    """Channels of the merged (per-action) map."""
    merge_layers: int = 1
    """1x1 conv layers after the merge (each runs once per candidate action)."""
    action_hidden: int = 64
    """Hidden width of the action-embedding MLP."""
    head_hidden: int = 64
    """Hidden width of the final MLP."""
    blob_sigma_m: float = 0.03
    """Radius (std, metres) of the round blob at the grasp point used for pooling."""
    blob_long_m: float = 0.06
    """Std (metres) of the oriented blob along the finger-closing axis."""
    blob_short_m: float = 0.02
    """Std (metres) of the oriented blob across the finger-closing axis."""
    offset_scale_m: float = 0.1
    """Offsets of cells from the grasp point are divided by this before entering the net."""
    glimpse_layer: int = 1
    """Trunk layer whose (finer) map the glimpse samples; -1 disables the glimpse."""
    glimpse_channels: int = 32
    """Channels of the glimpse map (1x1 projection of that layer)."""
    glimpse_grid: int = 3
    """The glimpse samples a grid_size x grid_size pattern in the gripper frame."""
    glimpse_spacing_m: float = 0.015
    """Spacing (metres) of the glimpse pattern."""
    pixels: PixelMapping = field(default_factory=PixelMapping)
    """Image-to-world mapping; must match the camera."""
    action_shift_m: tuple[float, float] = (0.0, 0.0)
    """Cell-frame (x, y) metres from command to finger landing (0; fine-tuning sets it)."""

    def __post_init__(self) -> None:
        if len(self.trunk_channels) != len(self.trunk_strides) or not self.trunk_channels:
            raise ValueError("trunk_channels and trunk_strides must be non-empty, same length")
        if self.merge_layers < 0:
            raise ValueError("merge_layers must be >= 0")
        if not -1 <= self.glimpse_layer < len(self.trunk_channels):
            raise ValueError("glimpse_layer must be -1 or index a trunk layer")


N_SPATIAL = 6
"""Action-relative maps: dx, dy (image frame), u, v (gripper frame), round and oriented blob."""


@dataclass(frozen=True)
class Encoded:
    """Per-image features computed once and shared by all candidate actions."""

    features: Tensor
    """Trunk output [B, C, h, w], already normalised (BatchNorm)."""
    glimpse: Tensor | None
    """Finer map [B, Cg, hg, wg] sampled at points around each grasp, or None."""


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class QNet(nn.Module):
    """Q(image, action) -> P(grasp success); trunk once per image, cheap per action.

    ``encode(images)`` runs the trunk; ``logits_from(encoded, actions)`` scores
    ``[B, N, 3]`` actions against ``B`` encoded images; ``forward`` does both and
    applies the sigmoid. Images are raw uint8 ``[B, H, W, 3]``; normalisation is
    inside the model, so the exported graph takes camera pixels as they are.
    """

    def __init__(self, config: QNetConfig = QNetConfig(), spec: Spec = DEFAULT_SPEC) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        layers: list[nn.Module] = []
        cin = spec.image_channels
        h, w = spec.image_height, spec.image_width
        for i, (cout, stride) in enumerate(
            zip(config.trunk_channels, config.trunk_strides, strict=True)
        ):
            layers.append(_conv_bn(cin, cout, 5 if i == 0 else 3, stride))
            cin = cout
            h, w = (h + stride - 1) // stride, (w + stride - 1) // stride
        self.trunk = nn.Sequential(*layers)
        c = config.merge_channels
        n_glimpse = 0
        self.glimpse_proj: nn.Module | None = None
        if config.glimpse_layer >= 0:
            g_in = config.trunk_channels[config.glimpse_layer]
            self.glimpse_proj = nn.Sequential(
                nn.Conv2d(g_in, config.glimpse_channels, 1, bias=False),
                nn.BatchNorm2d(config.glimpse_channels),
            )
            n_glimpse = config.glimpse_grid**2 * config.glimpse_channels
            ticks = (torch.arange(config.glimpse_grid) - (config.glimpse_grid - 1) / 2) * float(
                config.glimpse_spacing_m
            )
            pu, pv = torch.meshgrid(ticks, ticks, indexing="ij")
            self.register_buffer("glimpse_u", pu.reshape(1, -1), persistent=False)
            self.register_buffer("glimpse_v", pv.reshape(1, -1), persistent=False)
        # Last trunk projection: no ReLU, so the merge adds to pre-activations.
        self.trunk_proj = nn.Conv2d(cin, c, 1)
        self.action_mlp = nn.Sequential(
            nn.Linear(6, config.action_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.action_hidden, c),
        )
        self.spatial_proj = nn.Conv2d(N_SPATIAL, c, 1, bias=False)
        self.merge_bn = nn.BatchNorm2d(c)
        merge: list[nn.Module] = []
        for _ in range(config.merge_layers):
            merge += [nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.merge = nn.Sequential(*merge)
        self.head = nn.Sequential(
            nn.Linear(2 * c + n_glimpse, config.head_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.head_hidden, config.head_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.head_hidden, 1),
        )
        self.map_size = (h, w)
        pm = config.pixels
        xs = (
            pm.centre_x_m
            + ((torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1) * pm.half_width_m
        )
        ys = (
            pm.centre_y_m
            - ((torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1) * pm.half_height_m
        )
        self.register_buffer(
            "cell_x", xs.view(1, 1, w).expand(1, h, w).contiguous(), persistent=False
        )
        self.register_buffer(
            "cell_y", ys.view(1, h, 1).expand(1, h, w).contiguous(), persistent=False
        )

    def encode(self, images: Tensor) -> Encoded:
        """Run the trunk on uint8 images [B, H, W, 3]."""
        x = images.permute(0, 3, 1, 2).contiguous().to(torch.float32) * (1.0 / 255.0) - 0.5
        glimpse = None
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            if i == self.config.glimpse_layer and self.glimpse_proj is not None:
                glimpse = self.glimpse_proj(x)
        return Encoded(self.trunk_proj(x), glimpse)

    def _glimpse(self, glimpse: Tensor, actions: Tensor) -> Tensor:
        """Bilinear samples [B, N, K*Cg] of the glimpse map on a pattern in each gripper frame."""
        b, n = actions.shape[0], actions.shape[1]
        spec, pm = self.spec, self.config.pixels
        gx = actions[..., 0:1] * spec.workspace_x_m
        gy = actions[..., 1:2] * spec.workspace_y_m
        yaw = actions[..., 2:3] * spec.yaw_range_rad
        c, s = torch.cos(yaw), torch.sin(yaw)
        pu, pv = self.glimpse_u, self.glimpse_v
        px = gx + c * pu - s * pv  # type: ignore[operator]
        py = gy + s * pu + c * pv  # type: ignore[operator]
        grid = torch.stack(
            [(px - pm.centre_x_m) / pm.half_width_m, (pm.centre_y_m - py) / pm.half_height_m],
            dim=-1,
        ).view(b, -1, 1, 2)
        samples = F.grid_sample(glimpse, grid, mode="bilinear", align_corners=False)
        k = grid.shape[1] // n
        return samples.view(b, -1, n, k).permute(0, 2, 3, 1).reshape(b, n, -1)

    def _spatial(self, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Action-relative maps [M, K, h, w] and the pooling weights [M, 1, h, w] for [M, 3]."""
        cfg, spec = self.config, self.spec
        gx = (actions[:, 0] * spec.workspace_x_m).view(-1, 1, 1)
        gy = (actions[:, 1] * spec.workspace_y_m).view(-1, 1, 1)
        yaw = (actions[:, 2] * spec.yaw_range_rad).view(-1, 1, 1)
        dx = self.cell_x - gx  # type: ignore[operator]
        dy = self.cell_y - gy  # type: ignore[operator]
        c, s = torch.cos(yaw), torch.sin(yaw)
        # The sim gripper's fingers slide along its local y axis, (-sin yaw, cos yaw):
        # v runs along the closing axis, u along the finger width.
        u = c * dx + s * dy
        v = c * dy - s * dx
        r2 = dx * dx + dy * dy
        blob = torch.exp(r2 * (-0.5 / cfg.blob_sigma_m**2))
        oblob = torch.exp(-0.5 * ((u / cfg.blob_short_m) ** 2 + (v / cfg.blob_long_m) ** 2))
        k = 1.0 / cfg.offset_scale_m
        maps = torch.stack([dx * k, dy * k, u * k, v * k, blob, oblob], dim=1)
        weights = blob / (blob.sum(dim=(1, 2), keepdim=True) + 1e-6)
        return maps, weights.unsqueeze(1)

    def _action_features(self, actions: Tensor) -> Tensor:
        yaw = actions[:, 2:3] * self.spec.yaw_range_rad
        feats = torch.cat(
            [
                actions[:, 0:2],
                torch.sin(yaw),
                torch.cos(yaw),
                torch.sin(2 * yaw),
                torch.cos(2 * yaw),
            ],
            dim=1,
        )
        return self.action_mlp(feats)  # type: ignore[no-any-return]

    def logits_from(self, encoded: Encoded, actions: Tensor) -> Tensor:
        """Logits [B, N] of actions [B, N, 3] (or [N, 3], shared by every image)."""
        f = encoded.features
        b, c, h, w = f.shape
        if actions.dim() == 2:
            actions = actions.unsqueeze(0).expand(b, -1, -1)
        sx, sy = self.config.action_shift_m
        if sx or sy:
            actions = actions + actions.new_tensor(
                [sx / self.spec.workspace_x_m, sy / self.spec.workspace_y_m, 0.0]
            )
        n = actions.shape[1]
        flat = actions.reshape(-1, actions.shape[2])
        maps, weights = self._spatial(flat)
        e = self._action_features(flat)
        per_action = (self.spatial_proj(maps) + e.view(-1, c, 1, 1)).view(b, n, c, h, w)
        x = (per_action + f.unsqueeze(1)).view(b * n, c, h, w)
        x = torch.relu(self.merge_bn(x))
        x = self.merge(x)
        flat_x = x.view(b * n, c, h * w)
        local = torch.bmm(flat_x, weights.view(b * n, h * w, 1)).view(b * n, c)
        parts = [local, flat_x.amax(dim=2)]
        if encoded.glimpse is not None:
            parts.append(self._glimpse(encoded.glimpse, actions).reshape(b * n, -1))
        pooled = torch.cat(parts, dim=1)
        return self.head(pooled).view(b, n)  # type: ignore[no-any-return]

    def logits(self, images: Tensor, actions: Tensor) -> Tensor:
        """Logits [B, N] for uint8 images [B, H, W, 3] and actions [B, N, 3]."""
        return self.logits_from(self.encode(images), actions)

    def forward(self, images: Tensor, actions: Tensor) -> Tensor:
        """P(success) [B, N] for uint8 images [B, H, W, 3] and actions [B, N, 3]."""
        return torch.sigmoid(self.logits(images, actions))
