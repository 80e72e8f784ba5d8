"""Augmentation throughput of the two ways `lesionseg train` feeds a batch, side by side in one run.

    .venv/bin/python benchmarks/augment_throughput.py [--config configs/lite0_256_gpu.yaml] [--images 256]

  per_image   albumentations on one CPU core (the DataLoader path, per worker process), img/s
  batched     data/batch_augment.py on this machine's CPU tensors (the data.on_device path), img/s, gather
              from the resident uint8 set included
Both use the config's augment.* keys, input size and batch size, on ISIC 2017 train images (or --data).
A GPU-side figure needs a GPU: run it there with --device cuda. Writes
benchmarks/results/augment_throughput.json
with the machine's description (CPU flags included).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lesionseg.config import load_config
from lesionseg.data.batch_augment import BatchAugment
from lesionseg.data.datamodule import resident_tensors
from lesionseg.data.dataset import SegmentationDataset
from lesionseg.data.transforms import train_transform
from lesionseg.machine import describe_machine
from lesionseg.pairs import discover

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "lite0_256_gpu.yaml")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017" / "train")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "augment_throughput.json")
    args = ap.parse_args()
    cfg = load_config(args.config)
    size, bs = cfg.data.image_size, cfg.data.batch_size
    dataset = SegmentationDataset(discover(args.data)[: args.images],
                                  train_transform(size, cfg.augment, seed=0))
    x, y = resident_tensors(dataset, size)  # decodes once; both paths then start from decoded pixels
    decoded = [(x[i].permute(1, 2, 0).numpy(), y[i, 0].numpy()) for i in range(len(x))]

    start = time.perf_counter()
    for image, mask in decoded:
        dataset.transform(image=image, mask=mask)
    per_image = len(decoded) / (time.perf_counter() - start)

    dev = torch.device(args.device)
    x, y = x.to(dev), y.to(dev)
    augment, gen = BatchAugment(size, cfg.augment), torch.Generator(device=dev).manual_seed(0)
    augment(x[:bs], y[:bs], gen)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start, done = time.perf_counter(), 0
    order = torch.randperm(len(x), device=dev, generator=gen)
    for i in range(0, len(x) - bs + 1, bs):
        idx = order[i:i + bs]
        augment(x[idx], y[idx], gen)
        done += bs
    if dev.type == "cuda":
        torch.cuda.synchronize()
    batched = done / (time.perf_counter() - start)

    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    machine = {**describe_machine(), "device": device}
    result = {
        "machine": machine,
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "image_size": size,
        "batch_size": bs,
        "images": len(decoded),
        "per_image_albumentations_img_per_s_one_core": round(per_image, 1),
        f"batched_{dev.type}_img_per_s": round(batched, 1),
        "ratio_batched_vs_per_image": round(batched / per_image, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
