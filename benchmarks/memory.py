"""Peak resident memory (RSS) of training and prediction, one fresh process per row.

    .venv/bin/python benchmarks/memory.py [--out benchmarks/results/memory.json]

Training rows: build the model, AdamW, two fp32 channels_last steps (forward, Dice+BCE, backward, step)
at batch 8, 256² — the original setting — and report the process's peak RSS and the peak minus the RSS after
imports (what the model, its activations and the optimizer add). MONAI BasicUNet rows at the same widths
when monai is installed. Prediction row: `lesionseg predict` of a 4000×3000 JPEG with the bundled model
(the image is decoded once, resized to the network's input, and only the probability map is resized back,
so memory grows with the photo's pixels, not with the network).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, SIZE = 8, 256

TRAIN = r"""
import sys, json, torch
sys.path.insert(0, {src!r})
torch.set_num_threads(2)
from lesionseg.config import ModelConfig
from lesionseg.losses import DeepSupervisionLoss, DiceBCELoss
from lesionseg.memory import peak_rss_mb
from lesionseg.models import build_model, count_parameters
kind, args = {kind!r}, {args!r}
base = peak_rss_mb()
if kind == "lesionseg":
    model = build_model(ModelConfig(**args))
else:
    from monai.networks.nets import BasicUNet
    w = args["base_width"]
    model = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=(w, 2*w, 4*w, 8*w, 16*w, w))
model = model.to(memory_format=torch.channels_last).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
loss_fn = DeepSupervisionLoss(DiceBCELoss())
x = torch.randn({batch}, 3, {size}, {size}).contiguous(memory_format=torch.channels_last)
y = (torch.rand({batch}, 1, {size}, {size}) > 0.5).float()
for _ in range(2):
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()
peak = peak_rss_mb()
print(json.dumps(dict(params=count_parameters(model), peak_mb=peak, added_mb=peak - base)))
"""

PREDICT = r"""
import sys
from lesionseg.cli import app
from lesionseg.memory import peak_rss_mb
try:
    app(sys.argv[1:])
except SystemExit as e:
    assert e.code == 0, e.code
print(peak_rss_mb())
"""

MODELS = [
    ("lesionseg default (lite0 encoder, b16, DS)", "lesionseg",
     dict(encoder="efficientnet-lite0", base_width=16, depth=5, deep_supervision=True)),
    ("lesionseg cpu (lite0 encoder, b8, DS)", "lesionseg",
     dict(encoder="efficientnet-lite0", base_width=8, depth=5, deep_supervision=True)),
    (
        "lesionseg plain U-Net b16 (cpu_fast)",
        "lesionseg",
        dict(base_width=16, depth=4, deep_supervision=True),
    ),
    ("lesionseg seed U-Net b64", "lesionseg", dict(base_width=64, depth=4)),
    ("MONAI BasicUNet b16", "monai", dict(base_width=16)),
    ("MONAI BasicUNet b64", "monai", dict(base_width=64)),
]


def run_python(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = ap.parse_args()
    rows = []
    for label, kind, model_args in MODELS:
        code = TRAIN.format(src=str(ROOT / "src"), kind=kind, args=model_args, batch=BATCH, size=SIZE)
        try:
            rows.append({"row": f"train: {label}", **json.loads(run_python(code))})
        except RuntimeError as exc:  # e.g. monai not installed
            print(f"skipped {label}: {exc}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        import numpy as np
        from PIL import Image

        img = np.zeros((3000, 4000, 3), np.uint8)
        img[1000:2000, 1500:2500] = 120
        Image.fromarray(img).save(Path(tmp) / "big.jpg", quality=90)
        peak = float(
            run_python(PREDICT, "predict", str(Path(tmp) / "big.jpg"), "--out", str(Path(tmp) / "o"))
        )
        rows.append({"row": "predict: 4000×3000 JPEG, bundled default model", "peak_mb": peak})
    result = {"setting": f"training: batch {BATCH}, {SIZE}², fp32 channels_last, AdamW, 2 steps; peak RSS "
                         "(VmHWM, the process's own) of a fresh process", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| row | params | peak RSS (MB) | added by training (MB) |\n| --- | --- | --- | --- |")
    for r in rows:
        params = f"{r['params'] / 1e6:.2f} M" if "params" in r else ""
        added = f"{r['added_mb']:.0f}" if "added_mb" in r else ""
        print(f"| {r['row']} | {params} | {r['peak_mb']:.0f} | {added} |")


if __name__ == "__main__":
    main()
