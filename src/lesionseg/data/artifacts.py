"""Synthetic dermoscopy artefacts drawn onto training images: hairs and hand-drawn ink rings.

The worst ISIC validation errors include lesions crossed by hair and small lesions inside a marker ring,
whose inside the model takes for lesion (docs/accuracy.md). `augment.hair` and `augment.ink` draw such
artefacts on the image only — the mask is unchanged, so the network learns they are not lesion. One
implementation serves both feeding paths: `BatchAugment` calls `draw_artifacts` on a batch, and
`transforms.SkinArtifacts` wraps it as an albumentations step for the per-image path. Both draw at the source
resolution, before the geometric transforms, where real artefacts are.

Curves are rasterised by splatting densely sampled points (≤ 0.5 px apart) and thickening them with a max
filter; widths are given for a 256-pixel side and scale with the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

HAIRS = (4, 16)  # hairs per image that gets hair (count uniform in the range)
HAIR_LENGTH = (0.2, 0.7)  # fraction of the image side
HAIR_BEND = 0.3  # control point offset, fraction of the hair's length
HAIR_WIDTH = (1, 3)  # px at 256²: 1 px wide hairs, or 3 px for a quarter of the images
HAIR_OPACITY = (0.5, 0.9)
HAIR_DARKNESS = (0.02, 0.25)  # black to dark brown
INK_SCALE = (1.3, 1.8)  # ring radii as multiples of the lesion's (2 standard deviations of its mask)
INK_ARC = (0.6, 1.0)  # fraction of a full turn: hand-drawn rings are often open
INK_WIDTH = (3, 5)  # px at 256²
INK_OPACITY = (0.5, 0.9)
INK_COLOURS = ((0.45, 0.20, 0.55), (0.15, 0.25, 0.60), (0.05, 0.05, 0.08))  # violet, blue, black marker


def _lerp(lo_hi: tuple[float, float], t: torch.Tensor) -> torch.Tensor:
    return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * t


def _splat(points: torch.Tensor, valid: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """points (B, ..., 2) as (x, y) in [0, 1] image fractions, valid (B, ...) → {0, 1} map (B, 1, H, W)."""
    b = points.shape[0]
    pts, ok = points.reshape(b, -1, 2), valid.reshape(b, -1)
    ix = (pts[..., 0] * w).floor().long()
    iy = (pts[..., 1] * h).floor().long()
    ok = ok & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = torch.arange(b, device=points.device)[:, None] * (h * w) + iy * w + ix
    canvas = torch.zeros(b * h * w, device=points.device)
    canvas[flat[ok]] = 1.0
    return canvas.view(b, 1, h, w)


def _thicken(hit: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Max filter of each sample's radius (px), then a soft one-pixel edge."""
    out = hit.clone()
    for r in radius.unique().tolist():
        if r > 0:
            pick = radius == r
            out[pick] = F.max_pool2d(hit[pick], 2 * r + 1, stride=1, padding=r)
    return 0.5 * out + 0.5 * F.avg_pool2d(out, 3, stride=1, padding=1, count_include_pad=False)


def max_filter_radius(thick: torch.Tensor, widths: tuple[int, int], side: int) -> torch.Tensor:
    """widths[1] (where `thick`) or widths[0] px at 256², scaled to this side: the max filter's radius."""
    width = torch.where(thick, widths[1], widths[0]).float() * side / 256
    return ((width - 1) / 2).round().clamp(min=0).long()


def _blend(x: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    return x * (1 - alpha) + colour.view(-1, 3, 1, 1) * alpha


def _hairs(x: torch.Tensor, on: torch.Tensor, u: Callable) -> torch.Tensor:
    b, _, h, w = x.shape
    n, steps = HAIRS[1], 2 * max(h, w)
    count = (HAIRS[0] + (HAIRS[1] - HAIRS[0] + 1) * u(b)).floor()
    valid = (torch.arange(n, device=x.device)[None] < count[:, None]) & on[:, None]
    p0 = u(b, n, 2)
    angle = 2 * math.pi * u(b, n)
    length = _lerp(HAIR_LENGTH, u(b, n))
    direction = torch.stack([angle.cos(), angle.sin()], -1)
    normal = torch.stack([-angle.sin(), angle.cos()], -1)
    p2 = p0 + length[..., None] * direction
    p1 = (p0 + p2) / 2 + (HAIR_BEND * length * (2 * u(b, n) - 1))[..., None] * normal
    t = torch.linspace(0, 1, steps, device=x.device).view(1, 1, steps, 1)
    curve = (1 - t) ** 2 * p0[:, :, None] + 2 * (1 - t) * t * p1[:, :, None] + t**2 * p2[:, :, None]
    hit = _splat(curve, valid[..., None].expand(b, n, steps), h, w)
    alpha = _thicken(hit, max_filter_radius(u(b) < 0.25, HAIR_WIDTH, max(h, w)))
    alpha = alpha * _lerp(HAIR_OPACITY, u(b)).view(b, 1, 1, 1)
    darkness = _lerp(HAIR_DARKNESS, u(b))[:, None]
    colour = darkness * torch.tensor([1.0, 0.8, 0.65], device=x.device)  # a brown tint
    return _blend(x, alpha, colour)


def _ink_rings(x: torch.Tensor, y: torch.Tensor, on: torch.Tensor, u: Callable) -> torch.Tensor:
    b, _, h, w = x.shape
    steps = 8 * max(h, w)
    # The lesion's centre and spread along each axis (image fractions); a random spot when there is none.
    gy = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h
    gx = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w
    m = (y[:, 0] > 0.5).float()
    area = m.sum((1, 2))
    some = area >= 4
    wy, wx = m.sum(2) / area.clamp(min=1)[:, None], m.sum(1) / area.clamp(min=1)[:, None]
    cy, cx = (wy * gy).sum(1), (wx * gx).sum(1)
    sy = ((wy * (gy - cy[:, None]) ** 2).sum(1)).sqrt()
    sx = ((wx * (gx - cx[:, None]) ** 2).sum(1)).sqrt()
    cx = torch.where(some, cx, _lerp((0.3, 0.7), u(b)))
    cy = torch.where(some, cy, _lerp((0.3, 0.7), u(b)))
    sx = torch.where(some, sx, torch.full_like(sx, 0.1))
    sy = torch.where(some, sy, torch.full_like(sy, 0.1))
    scale = _lerp(INK_SCALE, u(b))
    rx, ry = (2 * sx * scale).clamp(min=0.03), (2 * sy * scale).clamp(min=0.03)
    tilt = 0.6 * (u(b) - 0.5)
    start, arc = 2 * math.pi * u(b), 2 * math.pi * _lerp(INK_ARC, u(b))
    wobble_phase = 2 * math.pi * u(b)
    t = torch.linspace(0, 1, steps, device=x.device)[None]
    phi = start[:, None] + arc[:, None] * t
    wobble = 1 + 0.06 * torch.sin(3 * phi + wobble_phase[:, None])
    ex, ey = rx[:, None] * wobble * phi.cos(), ry[:, None] * wobble * phi.sin()
    c, s = tilt.cos()[:, None], tilt.sin()[:, None]
    curve = torch.stack([cx[:, None] + c * ex - s * ey, cy[:, None] + s * ex + c * ey], -1)
    hit = _splat(curve, on[:, None].expand(b, steps), h, w)
    alpha = _thicken(hit, max_filter_radius(u(b) < 0.5, INK_WIDTH, max(h, w)))
    alpha = alpha * _lerp(INK_OPACITY, u(b)).view(b, 1, 1, 1)
    palette = torch.tensor(INK_COLOURS, device=x.device)
    pick = (u(b) * len(INK_COLOURS)).floor().long().clamp(max=len(INK_COLOURS) - 1)
    colour = (palette[pick] + 0.1 * (2 * u(b, 3) - 1)).clamp(0, 1)
    return _blend(x, alpha, colour)


def draw_artifacts(x: torch.Tensor, y: torch.Tensor, hair: float, ink: float, u: Callable) -> torch.Tensor:
    """x float (B,3,H,W) in [0, 1], y (B,1,H,W) mask → x with hairs (probability `hair` per image) and an ink
    ring around the lesion (probability `ink`). `u(*shape)` draws uniforms, so a seeded caller repeats."""
    b = x.shape[0]
    if hair > 0:
        x = _hairs(x, u(b) < hair, u)
    if ink > 0:
        x = _ink_rings(x, y, u(b) < ink, u)
    return x.clamp(0, 1)
