"""Train one lesionseg model on one GPU within a wall-clock budget (for a lent accelerator).

Why a separate loop: on a GPU the CPU-side albumentations pipeline of `lesionseg train` would starve the
card, so here the whole training set lives on the GPU as uint8 and augmentation runs there, batched (random
resized crop + flips + rot90 as one affine resample, brightness/contrast/saturation, noise, blur).
Everything else is lesionseg's own: the pairing and reading code, the seeded carved split (selection never
sees the official val set), the model, the Dice+BCE / deep-supervision loss, and the model-file format,
so `lesionseg evaluate --weights OUT/model.pt` scores the result exactly like any other model.

The learning rate follows a cosine over *elapsed time* (linear warm-up first), so the schedule completes
whatever the card's speed. The best epoch on the carved split is kept.

    python scripts/gpu_train.py --data ../shared/data/isic2017/train --out runs/gpu_b64 --minutes 3 \
        model.base_width=64
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lesionseg.config import IMAGENET_MEAN, IMAGENET_STD, load_config
from lesionseg.data.dataset import split_pairs
from lesionseg.io import write_text
from lesionseg.losses import DeepSupervisionLoss, DiceBCELoss
from lesionseg.metrics import batch_jaccard_dice
from lesionseg.models import build_model, count_parameters, save_model
from lesionseg.pairs import discover, load_pair


def load_split(folder: str, size: int, val_fraction: float, seed: int, device, split: bool = True):
    """All pairs of `folder` as uint8 tensors on `device` (N,3,S,S) / (N,1,S,S), split like `lesionseg train`."""
    pairs = discover(folder)
    images, masks = [], []
    for pair in pairs:
        image, mask = load_pair(pair)
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask.view(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        images.append(torch.from_numpy(image.copy()).permute(2, 0, 1))  # decoded arrays may be read-only
        masks.append(torch.from_numpy(mask.view(np.uint8).copy())[None])
    x, y = torch.stack(images).to(device), torch.stack(masks).to(device)
    if not split:
        return (x, y), (x[:0], y[:0])
    train, val = split_pairs(pairs, val_fraction, seed)
    return (x[train], y[train]), (x[val], y[val])


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, y: torch.Tensor, scale=(0.5, 1.0), gen=None):
    """x uint8 (B,3,S,S), y uint8 (B,1,S,S) -> normalised float image, {0,1} float mask."""
    b, dev = x.shape[0], x.device
    u = lambda *shape: torch.rand(*shape, device=dev, generator=gen)  # noqa: E731
    x, y = x.float() / 255, y.float()
    # Random resized crop (area fraction `scale`, aspect 3/4..4/3), flips and rot90 as one affine map.
    area = scale[0] + (scale[1] - scale[0]) * u(b)
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u(b)
    w = (area * log_r.exp()).sqrt().clamp(max=1)
    h = (area / log_r.exp()).sqrt().clamp(max=1)
    cx, cy = (1 - w) * (2 * u(b) - 1), (1 - h) * (2 * u(b) - 1)
    fx = torch.where(u(b) < 0.5, -1.0, 1.0)
    fy = torch.where(u(b) < 0.5, -1.0, 1.0)
    k = (u(b) * 4).floor()  # rot90 count
    cos, sin = torch.cos(k * math.pi / 2).round(), torch.sin(k * math.pi / 2).round()
    a, d = w * fx, h * fy
    theta = torch.stack([torch.stack([cos * a, -sin * d, cx], 1), torch.stack([sin * a, cos * d, cy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="reflection", align_corners=False) > 0.5).float()
    # Colour: brightness, contrast, saturation (each ±20 %).
    x = x * (0.8 + 0.4 * u(b, 1, 1, 1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (0.8 + 0.4 * u(b, 1, 1, 1)) + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * (0.8 + 0.4 * u(b, 1, 1, 1)) + gray
    # Gaussian blur (p 0.2, 5×5, sigma 0.1..1.5) and Gaussian noise (p 0.2, sigma up to 0.04).
    blur = u(b) < 0.2
    if blur.any():
        sigma = 0.1 + 1.4 * u(int(blur.sum()), 1)
        t = torch.arange(-2, 3, device=dev).float()
        kern = torch.exp(-(t[None] ** 2) / (2 * sigma**2))
        kern = kern / kern.sum(1, keepdim=True)  # (n,5)
        xb = x[blur]
        n = xb.shape[0]
        kh = kern.repeat_interleave(3, 0).view(n * 3, 1, 1, 5)
        xb = F.conv2d(F.pad(xb.reshape(1, n * 3, *xb.shape[-2:]), [2, 2, 0, 0], mode="reflect"), kh, groups=n * 3)
        xb = F.conv2d(F.pad(xb, [0, 0, 2, 2], mode="reflect"), kh.transpose(2, 3), groups=n * 3)
        x[blur] = xb.view(n, 3, *x.shape[-2:])
    noisy = (u(b, 1, 1, 1) < 0.2).float()
    x = x + noisy * 0.04 * u(b, 1, 1, 1) * torch.randn(x.shape, device=dev, generator=gen)
    return normalise(x.clamp(0, 1)), y


@torch.no_grad()
def scores(model, x, y, batch: int, amp) -> tuple[float, float]:
    """Mean per-image Jaccard and Dice of (p > 0.5), with the metric `lesionseg train` validates with."""
    model.eval()
    jac, dice = [], []
    for i in range(0, len(x), batch):
        with amp():
            logits = model(normalise(x[i:i + batch].float() / 255).contiguous(memory_format=torch.channels_last))
        j, d = batch_jaccard_dice(logits.float() > 0, y[i:i + batch] > 0)
        jac.append(j)
        dice.append(d)
    model.train()
    return torch.cat(jac).mean().item(), torch.cat(dice).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="training folder (images/ + masks/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall-clock budget")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--crop-scale-min", type=float, default=0.5)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--split-seed", type=int, default=42)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-data", help="after selection, also score the kept model on this folder "
                    "(reporting only; `lesionseg evaluate` gives the official figures)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("overrides", nargs="*", help="model options as in `lesionseg train`, e.g. model.base_width=64")
    args = ap.parse_args()

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    amp = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    cfg = load_config(overrides=args.overrides).model  # the same parsing and checks as `lesionseg train`
    (x, y), (vx, vy) = load_split(args.data, args.image_size, args.val_fraction, args.split_seed, dev)
    model = build_model(cfg).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = DeepSupervisionLoss(DiceBCELoss())
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{cfg} | {count_parameters(model):,} params | {len(x)} train / {len(vx)} carved val | "
          f"bf16={bf16} | data loaded in {time.perf_counter() - started:.1f}s", flush=True)

    budget, warmup = args.minutes * 60, 100
    rows, best, best_epoch, best_state, step, t0 = [], -1.0, 0, None, 0, time.perf_counter()
    epoch = 0
    while time.perf_counter() - t0 < budget:
        epoch += 1
        e0, seen, total = time.perf_counter(), 0, 0.0
        order = torch.randperm(len(x), device=dev, generator=gen)
        for i in range(0, len(x) - args.batch_size + 1, args.batch_size):
            frac = (time.perf_counter() - t0) / budget
            if frac >= 1.0 and seen:  # budget spent: stop mid-epoch rather than overrun it
                break
            lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
            for group in opt.param_groups:
                group["lr"] = max(lr, 1e-6)
            idx = order[i:i + args.batch_size]
            xb, yb = augment(x[idx], y[idx], (args.crop_scale_min, 1.0), gen)
            with amp():
                outputs = model(xb.contiguous(memory_format=torch.channels_last))
            loss = loss_fn(outputs, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(idx)
            total += loss.detach()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - e0
        score, dice = scores(model, vx, vy, 64, amp)
        minutes = (time.perf_counter() - t0) / 60
        # The columns of `lesionseg train`'s metrics.csv, so `lesionseg plot` and the docs scripts read both.
        rows.append(dict(epoch=epoch - 1, train_loss=round(float(total) / max(1, seen // args.batch_size), 4),
                         val_loss="", val_mean_jaccard=round(score, 4), val_dice=round(dice, 4), lr=lr,
                         train_img_per_s=round(seen / train_s, 1), train_images=seen, elapsed_min=round(minutes, 3)))
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(" ".join(f"{k} {v}" for k, v in rows[-1].items()) + (" *" if best_epoch == epoch else ""), flush=True)

    model.load_state_dict(best_state)
    report = None
    if args.report_data:
        (rx, ry), _ = load_split(args.report_data, args.image_size, 0.0, args.split_seed, dev, split=False)
        report = {"folder": args.report_data, "mean_jaccard_at_input_size": scores(model, rx, ry, 64, amp)[0]}
    model.float().cpu()
    train_minutes = (time.perf_counter() - t0) / 60
    card = {
        "name": f"lesionseg GPU run ({cfg.encoder} encoder, base {cfg.base_width})",
        "data": f"{args.data} ({len(x) + len(vx)} pairs): trained on {len(x)}, selection on the seeded "
                f"{args.val_fraction:.0%} split carved from it (split_seed {args.split_seed})",
        "recipe": f"scripts/gpu_train.py: {args.image_size}² input, batch {args.batch_size}, AdamW lr {args.lr} "
                  f"wd {args.weight_decay}, cosine over {args.minutes} min, GPU augmentation, bf16={bf16}",
        "training": f"{epoch} epochs, {train_minutes:.1f} min on {torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}; "
                    f"best epoch {best_epoch}, carved-split mean Jaccard {best:.4f}",
        "licence": "weights for research use only: trained on ISIC archive images (CC-BY-NC / CC-0)",
    }
    save_model(out / "model.pt", model, cfg, image_size=args.image_size, card=card, half=True)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "metrics.csv", table.getvalue())
    summary = dict(config=dataclasses.asdict(cfg), args=vars(args), params=count_parameters(model), epochs=epoch,
                   best_epoch=best_epoch, carved_mean_jaccard=best, train_minutes=round(train_minutes, 2),
                   device=card["training"], report=report)
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
