"""3-D augmentation libraries side by side: patches per second on this CPU, one process, the same recipe.

    .venv/bin/python benchmarks/augment3d_throughput.py [--patches 60] [--threads 1]

The recipe is nnU-Net v2's default training augmentation (rotation ±30° and scaling 0.7–1.4 at p 0.2, noise
0.1, blur 0.2, brightness 0.15, contrast 0.15, simulated low resolution 0.25, gamma 0.3 (inverted 0.1),
mirroring on every axis) plus elastic deformation at p 0.2, written in each library's own transforms:
batchgeneratorsv2 (nnU-Net's; in the lock), TorchIO (`pip install torchio==1.2.1` beside it) and MONAI
(installed by `make venv`). Each draws a hippocampus-sized patch (40×56×40, nnU-Net's
plan) from a larger region of a synthetic volume and its labels. Writes
benchmarks/results/augment3d_throughput.json with the machine's description (CPU flags included).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from lesionseg.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
PATCH = (40, 56, 40)
REGION = (56, 72, 56)  # nnU-Net samples a larger region and crops the patch after the spatial transform


def region(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in REGION], indexing="ij")
    inside = (z / 0.6) ** 2 + (y / 0.5) ** 2 + (x / 0.4) ** 2 < 1
    labels = np.where(inside, np.where(y > 0, 1, 2), 0).astype(np.int16)
    image = (inside * 2.0 + rng.normal(0, 0.5, REGION)).astype(np.float32)
    return torch.from_numpy(image)[None], torch.from_numpy(labels)[None]


def batchgenerators_v2():
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    rotation = (-math.pi / 6, math.pi / 6)
    compose = ComposeTransforms([
        SpatialTransform(PATCH, 0, random_crop=False, p_elastic_deform=0.2, p_rotation=0.2, rotation=rotation,
                         p_scaling=0.2, scaling=(0.7, 1.4), p_synchronize_scaling_across_axes=1,
                         mode_seg="bilinear"),
        RandomTransform(GaussianNoiseTransform((0, 0.1), 1, synchronize_channels=True), 0.1),
        RandomTransform(GaussianBlurTransform((0.5, 1.0), synchronize_channels=False, synchronize_axes=False,
                                              p_per_channel=0.5, benchmark=True), 0.2),
        RandomTransform(MultiplicativeBrightnessTransform(BGContrast((0.75, 1.25)), False, 1), 0.15),
        RandomTransform(ContrastTransform(BGContrast((0.75, 1.25)), True, False, 1), 0.15),
        RandomTransform(SimulateLowResolutionTransform((0.5, 1), False, True, None, None, 0.5), 0.25),
        RandomTransform(GammaTransform(BGContrast((0.7, 1.5)), 1, False, 1, 1), 0.1),
        RandomTransform(GammaTransform(BGContrast((0.7, 1.5)), 0, False, 1, 1), 0.3),
        MirrorTransform((0, 1, 2)),
    ])

    def run(image, labels):
        out = compose(image=image, segmentation=labels)
        return out["image"], out["segmentation"]

    return run


def torchio():
    import torchio as tio

    compose = tio.Compose([
        tio.RandomAffine(scales=(0.7, 1.4), degrees=30, p=0.2),
        tio.RandomElasticDeformation(p=0.2),
        tio.CropOrPad(PATCH),
        tio.RandomNoise(std=(0, 0.1 ** 0.5), p=0.1),
        tio.RandomBlur(std=(0.5, 1.0), p=0.2),
        tio.Lambda(lambda t: t * np.random.uniform(0.75, 1.25), types_to_apply=[tio.INTENSITY], p=0.15),
        tio.Lambda(lambda t: (t - t.mean()) * np.random.uniform(0.75, 1.25) + t.mean(),
                   types_to_apply=[tio.INTENSITY], p=0.15),
        tio.RandomAnisotropy(downsampling=(1, 2), p=0.25),
        tio.RandomGamma(log_gamma=(-0.35, 0.4), p=0.3),
        tio.RandomFlip(axes=(0, 1, 2)),
    ])

    def run(image, labels):
        out = compose(tio.Subject(image=tio.ScalarImage(tensor=image), labels=tio.LabelMap(tensor=labels)))
        return out["image"].data, out["labels"].data

    return run


def monai():
    from monai import transforms as mt

    keys, both = ["image"], ["image", "labels"]
    compose = mt.Compose([
        mt.RandAffined(both, prob=0.2, rotate_range=(math.pi / 6,) * 3, scale_range=(0.3,) * 3,
                       mode=("bilinear", "nearest"), padding_mode="zeros"),
        mt.Rand3DElasticd(both, sigma_range=(5, 8), magnitude_range=(50, 150), prob=0.2,
                          mode=("bilinear", "nearest")),
        mt.CenterSpatialCropd(both, PATCH),
        mt.RandGaussianNoised(keys, prob=0.1, std=0.1 ** 0.5),
        mt.RandGaussianSmoothd(keys, sigma_x=(0.5, 1), sigma_y=(0.5, 1), sigma_z=(0.5, 1), prob=0.2),
        mt.RandScaleIntensityd(keys, factors=0.25, prob=0.15),
        mt.RandAdjustContrastd(keys, gamma=(0.7, 1.5), prob=0.3),
        mt.RandSimulateLowResolutiond(keys, zoom_range=(0.5, 1.0), prob=0.25),
        *[mt.RandFlipd(both, prob=0.5, spatial_axis=a) for a in range(3)],
    ])

    def run(image, labels):
        out = compose({"image": image, "labels": labels})
        return out["image"], out["labels"]

    return run


def measure(make, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
    run = make()
    inputs = [region(rng) for _ in range(4)]
    for image, labels in inputs[:2]:  # warm-up (kernel caches, lazy imports)
        run(image.clone(), labels.clone())
    start = time.perf_counter()
    for i in range(n):
        image, labels = inputs[i % len(inputs)]
        out_image, out_labels = run(image.clone(), labels.clone())
    seconds = time.perf_counter() - start
    return {"patches_per_s": round(n / seconds, 2), "ms_per_patch": round(1000 * seconds / n, 1),
            "out_shape": list(out_image.shape), "labels_kept": sorted(int(v) for v in torch.unique(
                torch.as_tensor(out_labels).round()))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "augment3d_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, make in (("batchgeneratorsv2", batchgenerators_v2), ("torchio", torchio), ("monai", monai)):
        try:
            results[name] = measure(make, args.patches)
        except ImportError as exc:  # peers beside the lock: pip install torchio==1.2.1
            print(f"{name}: not installed ({exc})", flush=True)
            continue
        print(name, results[name], flush=True)
    best = max(results, key=lambda k: results[k]["patches_per_s"])
    payload = {"machine": describe_machine(), "patch": list(PATCH), "region": list(REGION),
               "threads": args.threads, "patches": args.patches, "results": results,
               "ratios_to_fastest": {k: round(v["patches_per_s"] / results[best]["patches_per_s"], 3)
                                     for k, v in results.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["ratios_to_fastest"]))


if __name__ == "__main__":
    main()
