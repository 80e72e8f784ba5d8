"""The `augment.*` recipe applied to a whole batch of uint8 tensors, on whatever device holds them.

Used when the training set is resident on the training device (`data.on_device`): one affine (+ elastic)
resample per batch instead of per-image albumentations calls on the CPU, so a GPU is not starved. The keys
and their distributions follow `transforms.train_transform` (same probabilities, same ranges); the order is
artefacts (hair, ink, artifacts.py) → geometric (random resized crop, flips, rot90, elastic — one resample) →
colour jitter → noise → blur.
Every draw comes from the generator passed in, so a seeded generator gives the same batch on the same device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import (
    AUGMENT_STAGES,
    BLUR_KERNEL_SIZES,
    BLUR_SIGMA,
    ELASTIC_ALPHA,
    ELASTIC_SIGMA,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NOISE_STD,
    AugmentConfig,
)
from ..intensity import Normalization
from .artifacts import draw_artifacts

ASPECT = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range
CROP_TRIES = 10  # RandomResizedCrop draws up to 10 crops before falling back to the whole image


def _gaussian_taps(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(n,) sigmas → (n, 2·radius+1) normalised 1-D Gaussian kernels."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
    return k / k.sum(1, keepdim=True)


def _separable(x: torch.Tensor, taps: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """Filter each (sample, channel) plane of x (B,C,H,W) with that sample's 1-D kernel along H and W."""
    b, c, h, w = x.shape
    r = taps.shape[1] // 2
    k = taps.repeat_interleave(c, 0).view(b * c, 1, 1, -1)
    y = F.conv2d(F.pad(x.reshape(1, b * c, h, w), [r, r, 0, 0], mode=mode), k, groups=b * c)
    y = F.conv2d(F.pad(y, [0, 0, r, r], mode=mode), k.transpose(2, 3), groups=b * c)
    return y.view(b, c, h, w)


class BatchAugment:
    """x uint8 (B,3,H,W), y uint8/bool (B,1,H,W) → normalised float image and {0,1} float mask at
    size×size, the stages applied in config.AUGMENT_STAGES order."""

    def __init__(self, size: int, aug: AugmentConfig, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.aug = int(size), aug
        self.normalization = Normalization(mean, std, max_value=1.0)

    def stages(self) -> list[str]:
        """The stages this recipe applies, in order."""
        a = self.aug
        on = {"artifacts": a.hair > 0 or a.ink > 0, "geometry": True, "color_jitter": a.color_jitter > 0,
              "noise": a.noise > 0, "blur": a.blur > 0}
        return [stage for stage, _ in AUGMENT_STAGES if on[stage]]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        dev = x.device

        def u(*shape):
            return torch.rand(*shape, device=dev, generator=generator)

        x, y = x.float() / 255, y.float()
        for stage in self.stages():
            x, y = getattr(self, f"_stage_{stage}")(x, y, u, generator)
        return self.normalization.batch(x.clamp(0, 1)), y

    def _chance(self, p: float, b: int, u) -> torch.Tensor:
        return u(b) < p

    def _stage_artifacts(self, x, y, u, generator):
        return draw_artifacts(x, y, self.aug.hair, self.aug.ink, u), y

    def _stage_geometry(self, x, y, u, generator):
        """Crop, flips, rot90 and elastic folded into one resample (bilinear image, nearest mask)."""
        a, b, dev = self.aug, x.shape[0], x.device
        w, h = self._crop_size(b, u)
        cx, cy = (1 - w) * (2 * u(b) - 1), (1 - h) * (2 * u(b) - 1)
        # Flips and a rot90 (k uniform in 0..3 when applied), folded into the same affine map.
        fx = torch.where(self._chance(a.hflip, b, u), -1.0, 1.0)
        fy = torch.where(self._chance(a.vflip, b, u), -1.0, 1.0)
        k = torch.where(self._chance(a.rot90, b, u), (u(b) * 4).floor(), torch.zeros(b, device=dev))
        cos, sin = torch.cos(k * math.pi / 2).round(), torch.sin(k * math.pi / 2).round()
        sx, sy = w * fx, h * fy
        theta = torch.stack([torch.stack([cos * sx, -sin * sx, cx], 1),
                             torch.stack([sin * sy, cos * sy, cy], 1)], 1)
        grid = F.affine_grid(theta, [b, 3, self.size, self.size], align_corners=False)
        if a.elastic > 0:
            grid = grid + self._elastic_offsets(b, self._chance(a.elastic, b, u), u)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        y = F.grid_sample(y, grid, mode="nearest", padding_mode="reflection", align_corners=False)
        return x, y

    def _stage_color_jitter(self, x, y, u, generator):
        return self._color_jitter(x, self._chance(self.aug.color_jitter, x.shape[0], u), u), y

    def _stage_noise(self, x, y, u, generator):
        b = x.shape[0]
        std = NOISE_STD[0] + (NOISE_STD[1] - NOISE_STD[0]) * u(b, 1, 1, 1)
        on = self._chance(self.aug.noise, b, u).float().view(b, 1, 1, 1)
        return x + on * std * torch.randn(x.shape, device=x.device, generator=generator), y

    def _stage_blur(self, x, y, u, generator):
        return self._blur(x, self._chance(self.aug.blur, x.shape[0], u), u), y

    def _crop_size(self, b: int, u) -> tuple[torch.Tensor, torch.Tensor]:
        """RandomResizedCrop's draw: area fraction in [min, max] of the (square) source, aspect in 3/4..4/3;
        the first of CROP_TRIES draws that fits inside the image, else the whole image, as albumentations
        does."""
        a = self.aug
        area = a.crop_scale_min + (a.crop_scale_max - a.crop_scale_min) * u(b, CROP_TRIES)
        ratio = (math.log(ASPECT[0]) + (math.log(ASPECT[1]) - math.log(ASPECT[0])) * u(b, CROP_TRIES)).exp()
        w, h = (area * ratio).sqrt(), (area / ratio).sqrt()
        fits = (w <= 1) & (h <= 1)
        first = fits.int().argmax(1, keepdim=True)  # index of the first draw that fits (0 when none does)
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        anyfit = fits.any(1)
        return torch.where(anyfit, w, torch.ones_like(w)), torch.where(anyfit, h, torch.ones_like(h))

    def _elastic_offsets(self, b: int, on: torch.Tensor, u) -> torch.Tensor:
        """Smoothed random displacements (ElasticTransform: alpha px, Gaussian sigma px) in grid units."""
        s = self.size
        noise = u(b, 2, s, s) * 2 - 1
        taps = _gaussian_taps(torch.full((b,), float(ELASTIC_SIGMA), device=on.device), 3 * ELASTIC_SIGMA)
        field = _separable(noise, taps, mode="reflect") * ELASTIC_ALPHA * (2.0 / s)  # pixels → [-1, 1] units
        return (field * on.float().view(b, 1, 1, 1)).permute(0, 2, 3, 1)

    def _color_jitter(self, x: torch.Tensor, on: torch.Tensor, u) -> torch.Tensor:
        """Brightness, contrast, saturation: each factor in 1 ± strength, for the drawn samples only."""
        b, s = x.shape[0], self.aug.color_jitter_strength

        def factor():
            f = 1 + s * (2 * u(b, 1, 1, 1) - 1)
            return torch.where(on.view(b, 1, 1, 1), f, torch.ones_like(f))

        x = (x * factor()).clamp(0, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factor() + mean).clamp(0, 1)
        gray = x.mean(dim=1, keepdim=True)
        return ((x - gray) * factor() + gray).clamp(0, 1)

    @staticmethod
    def _blur(x: torch.Tensor, on: torch.Tensor, u) -> torch.Tensor:
        """GaussianBlur: kernel 3 or 5, sigma in BLUR_SIGMA; samples not drawn get the identity kernel."""
        b = x.shape[0]
        radius = max(BLUR_KERNEL_SIZES) // 2
        sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u(b)
        taps = _gaussian_taps(sigma, radius)
        small = u(b) < 0.5  # kernel 3: zero the outer taps
        t = torch.arange(-radius, radius + 1, device=x.device).abs()
        taps = torch.where(small[:, None] & (t[None] > 1), torch.zeros_like(taps), taps)
        taps = taps / taps.sum(1, keepdim=True)
        identity = (t == 0).float().expand_as(taps)
        taps = torch.where(on[:, None], taps, identity)
        return _separable(x, taps)
