"""INT8 vs fp32 vs torch for the bundled models: accuracy on each dataset's val split and end-to-end latency.

    .venv/bin/python benchmarks/int8.py [--models cpu default] [--data ../shared/data]
        [--also cpu_half=runs/cpu_without_full_resolution_stage/model.pt
        polyp_half=runs/x/model.pt@kvasir_seg]

For each model: `lesionseg export` (fp32) and `lesionseg export --int8` calibrated on 64 images of the
model's own training set (ISIC 2017 train; Kvasir-SEG train for `polyp`), then `lesionseg.evaluate` with each
backend on that dataset's val split, and `Segmenter.predict` on one 256² image (median of ≥ 20 calls over ≥ 3
s).
JSON to benchmarks/results/int8.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lesionseg
from lesionseg.io import read_image
from lesionseg.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
TRAIN_DATA = {"cpu": "isic2017", "default": "isic2017", "polyp": "kvasir_seg"}


def median_ms(fn, repeats: int = 20, min_seconds: float = 3.0) -> float:
    """Median of at least `repeats` calls spread over at least `min_seconds`, so that a few milliseconds'
    latency is not decided by one burst of other work on the machine."""
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def latency_ms(weights: str, image) -> float:
    seg = lesionseg.Segmenter.load(weights, tta=False)  # one forward pass, whatever the model's TTA default
    return median_ms(lambda: seg.predict(image))


def peer_latency_ms() -> dict:
    """Peers' networks alone (no pre- or post-processing, so a lower bound for them), torch fp32, one 256²
    image: the original U-Net (milesial/Pytorch-UNet's architecture, widths 64→1024) and MONAI BasicUNet when
    installed."""
    import torch

    from lesionseg.config import ModelConfig
    from lesionseg.models import build_model

    peers = {"milesial U-Net (seed widths 64-1024)": lambda: build_model(ModelConfig(base_width=64, depth=4))}
    try:
        from monai.networks.nets import BasicUNet

        peers["MONAI BasicUNet (default features)"] = lambda: BasicUNet(
            spatial_dims=2, in_channels=3, out_channels=1
        )
    except ImportError:
        pass
    x = torch.randn(1, 3, 256, 256)
    out = {}
    for name, make in peers.items():
        model = make().eval()
        with torch.inference_mode():
            out[name] = median_ms(lambda: model(x), repeats=10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["cpu", "default", "polyp"])
    ap.add_argument(
        "--also",
        nargs="*",
        default=[],
        metavar="LABEL=MODEL_FILE[@DATASET]",
        help="more model files in the same run (e.g. a variant of a bundled model), scored on DATASET "
        "(isic2017 unless named)",
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8.json")
    args = ap.parse_args()
    image = read_image(ROOT / "src" / "lesionseg" / "assets" / "samples" / "ISIC_0012204.jpg")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        entries = [(model, model, TRAIN_DATA[model]) for model in args.models]
        for item in args.also:
            label, _, weights = item.partition("=")
            weights, _, dataset = weights.partition("@")
            entries.append((label, weights, dataset or "isic2017"))
        for model, weights, dataset in entries:
            fp32, int8 = Path(tmp) / f"{model}.onnx", Path(tmp) / f"{model}_int8.onnx"
            lesionseg_cli = [sys.executable, "-m", "lesionseg", "export", "--weights", weights]
            subprocess.run([*lesionseg_cli, "--out", str(fp32)], check=True, capture_output=True)
            calibration = args.data / dataset / "train" / "images"
            subprocess.run([*lesionseg_cli, "--out", str(int8), "--int8", "--calibration", str(calibration)],
                           check=True, capture_output=True)
            row = {"model": model, "weights": weights,
                   "latency_ms": {name: latency_ms(w, image) for name, w in
                                  (("torch", weights), ("ort_fp32", str(fp32)), ("ort_int8", str(int8)))}}
            val = args.data / dataset / "val"  # the model's own dataset
            if val.is_dir():
                row[dataset] = {name: round(lesionseg.evaluate(val, weights=w, tta=False)["mean_jaccard"], 4)
                                for name, w in (("ort_fp32", str(fp32)), ("ort_int8", str(int8)))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine = describe_machine()
    peers = peer_latency_ms()
    print(json.dumps({"peers_model_only_ms": peers}), flush=True)
    args.out.write_text(
        json.dumps(
            {"machine": machine, "image": "256x256 JPEG, end to end through Segmenter.predict", "rows": rows,
             "peers_model_only_ms": peers},
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
