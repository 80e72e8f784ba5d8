"""Where an epoch of `lesionseg train` spends its time, for a config (default: configs/lite0_160_cpu.yaml).

    .venv/bin/python benchmarks/loop_profile.py [--config configs/lite0_160_cpu.yaml] [--batches 30]

Measures, on ISIC 2017 train (or --data), in one process and one after the other:
  loader      the training DataLoader alone (decode cache + albumentations + to-tensor), img/s
  model       the bare training step (forward, Dice+BCE / deep supervision, backward, AdamW) on random
              tensors of the same shape, img/s
  loop        the real path: the LightningModule's model + loss + optimizer fed by the loader, img/s
and the torch profiler's top operators for a few loop steps. If loop ≈ model, the loop and data loading
add nothing worth optimising; loader img/s far above model img/s means augmenting in the main process
(num_workers=0) costs little. Writes benchmarks/results/loop_profile.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lesionseg.config import load_config
from lesionseg.data.datamodule import SegmentationDataModule
from lesionseg.training.module import SegmentationModule

ROOT = Path(__file__).resolve().parents[1]


def rate(n_images: int, seconds: float) -> float:
    return round(n_images / seconds, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "lite0_160_cpu.yaml")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017" / "train")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loop_profile.json")
    args = ap.parse_args()
    cfg = load_config(args.config, [])
    torch.manual_seed(0)
    dm = SegmentationDataModule(args.data, None, cfg.data, cfg.augment, seed=0)
    dm.setup("fit")  # no trainer: the CPU, so the per-image albumentations path unless data.on_device=true
    loader = dm.train_dataloader()
    bs, n = cfg.data.batch_size, args.batches

    batches, start = [], time.perf_counter()
    for i, batch in enumerate(loader):
        batches.append(batch)
        if i + 1 == n:
            break
    loader_s = time.perf_counter() - start

    module = SegmentationModule(cfg).train()
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

    def step(x, y):
        loss = module.loss(module(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    x = torch.randn_like(batches[0][0])
    y = (torch.rand_like(batches[0][1].float()) > 0.5).float()
    step(x, y)  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        step(x, y)
    model_s = time.perf_counter() - start

    start = time.perf_counter()
    for i, (xb, yb) in enumerate(loader):  # loading and stepping interleaved, as in training
        step(xb, yb.float())
        if i + 1 == n:
            break
    loop_s = time.perf_counter() - start

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for xb, yb in batches[:5]:
            step(xb, yb.float())
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    result = {
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "batch": bs,
        "image_size": cfg.data.image_size,
        "batches": n,
        "threads": torch.get_num_threads(),
        "loader_img_s": rate(n * bs, loader_s),
        "model_step_img_s": rate(n * bs, model_s),
        "loop_img_s": rate(n * bs, loop_s),
        "profiler_top_ops": table.splitlines(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table)
    print(json.dumps({k: v for k, v in result.items() if k != "profiler_top_ops"}, indent=2))


if __name__ == "__main__":
    main()
