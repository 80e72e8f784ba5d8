"""Eager vs `torch.compile` training steps (what `trainer.compile=true` changes), on this machine's device.

    .venv/bin/python benchmarks/compile_training.py [--config configs/lite0_160_cpu.yaml] [--steps 20]
        [--modes default max-autotune-no-cudagraphs]      # on a GPU add: reduce-overhead

The step is the LightningModule's: forward (deep supervision included), Dice+BCE, backward, AdamW, in the
config's precision (bf16 autocast where native) and memory format, on random batches of the config's size.
Reports compile seconds (first steps) and img/s after warm-up, per mode, with the ratio to eager.
JSON to benchmarks/results/compile_training_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from lesionseg.config import load_config
from lesionseg.training.fit import resolve_precision
from lesionseg.training.module import SegmentationModule

ROOT = Path(__file__).resolve().parents[1]


def measure(cfg, device, mode: str | None, steps: int) -> dict:
    torch.manual_seed(0)
    module = SegmentationModule(cfg).to(device).train()
    model = module.model if mode is None else torch.compile(module.model, mode=mode)
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
    bf16 = resolve_precision(cfg.trainer.precision, "gpu" if device.type == "cuda" else "cpu") == "bf16-mixed"
    size, bs = cfg.data.image_size, cfg.data.batch_size
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=module.memory_format)
    y = (torch.rand(bs, 1, size, size, device=device) > 0.5).float()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(3):
        step()
    sync()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return {"mode": mode or "eager", "first_3_steps_s": round(warm, 1),
            "img_per_s": round(steps * bs / (time.perf_counter() - start), 2), "bf16": bf16}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "lite0_160_cpu.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--modes", nargs="+", default=["default"])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [measure(cfg, device, None, args.steps)]
    for mode in args.modes:
        rows.append(measure(cfg, device, mode, args.steps))
        rows[-1]["vs_eager"] = round(rows[-1]["img_per_s"] / rows[0]["img_per_s"], 2)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    )
    result = {"device": name, "torch": torch.__version__, "config": str(args.config),
              "overrides": args.overrides, "batch": cfg.data.batch_size, "size": cfg.data.image_size,
              "rows": rows}
    out = ROOT / "benchmarks" / "results" / f"compile_training_{device.type}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
