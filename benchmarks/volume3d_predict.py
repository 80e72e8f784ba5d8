"""A 3-D network over whole volumes: speed and memory of `PatchCoverage`, with MONAI's
`sliding_window_inference` on the same network and the same normalised volume side by side.

1. A CT-sized volume (512×512×300 at 0.8×0.8×1.5 mm, the model at that spacing; sizes are x y z, RAS+):
   voxels per second through `segment_volume` (sliding window at 50 % overlap, labels as uint8), torch and
   ONNX Runtime, and the peak RSS of the process, measured in a child process per backend.
2. MONAI's `sliding_window_inference` (gaussian, the same overlap and batch) on the same normalised volume,
   for the network call and blending alone.

The network is untrained (speed and memory do not depend on its weights): a 3-D U-Net of base width 16 at
patch 128×128×64, or `--weights` a trained model file whose patch and spacing are used instead.

    .venv/bin/python benchmarks/volume3d_predict.py [--shape 512 512 300] [--weights runs/.../model.pt]

JSON to benchmarks/results/volume3d_predict.json with the machine's description (CPU flags included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def untrained_model(path: Path, patch, spacing) -> Path:
    import torch

    from lesionseg.config import ModelConfig
    from lesionseg.inference.coverage import Patching
    from lesionseg.intensity import Intensity
    from lesionseg.labels import Labels
    from lesionseg.model_file import ModelFile, Preprocessing
    from lesionseg.models import build_model
    from lesionseg.models.unet3d import pooling_plan

    torch.manual_seed(0)
    kernels, strides = pooling_plan(spacing, patch)
    cfg = ModelConfig(arch="unet3d", in_channels=1, out_channels=3, base_width=16, depth=len(strides) - 1,
                      kernels=[list(k) for k in kernels], strides=[list(s) for s in strides])
    pre = Preprocessing(image_size=0, intensity=Intensity("ct", (-1000.0, 1000.0), 0.0, 300.0),
                        patching=Patching(tuple(patch), tuple(spacing)))
    labels = Labels.of("exclusive", [("organ", 1), ("lesion", 2)])
    card = {"note": "untrained, for timing"}
    ModelFile.from_model(build_model(cfg).eval(), cfg, pre, card, labels).write(path)
    return path


def child(weights: str, backend: str, shape, spacing) -> dict:
    """One backend in this process: a synthetic CT through `segment_volume`; seconds and peak RSS."""
    from lesionseg.inference import Segmenter
    from lesionseg.inference.volume_coverage import segment_volume
    from lesionseg.io.volumes import Volume
    from lesionseg.memory import peak_rss_mb

    rng = np.random.default_rng(0)
    array = rng.normal(40, 300, shape).astype(np.int16).astype(np.float32)
    volume = Volume("ct", array, np.diag([*spacing, 1.0]), Path("ct"))
    before = peak_rss_mb()
    seg = Segmenter.load(weights, backend=backend)
    start = time.perf_counter()
    labels = segment_volume(seg, volume)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "voxels_per_s": round(array.size / seconds),
            "peak_rss_mb": round(peak_rss_mb()), "rss_before_mb": round(before), "labels": str(labels.dtype)}


def monai_blend(weights: str, shape, patch) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from lesionseg.models import load_model

    net = load_model(weights).model.eval()
    image = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (1, 1, *shape)).astype(np.float32))
    start = time.perf_counter()
    with torch.inference_mode():
        sliding_window_inference(image, patch, 1, net, overlap=0.5, mode="gaussian", sigma_scale=0.125)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "voxels_per_s": round(image.numel() / seconds)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], help="x y z voxels")
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5], help="x y z mm")
    ap.add_argument("--patch", type=int, nargs=3, default=[128, 128, 64], help="x y z voxels")
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--child", nargs=2, metavar=("WEIGHTS", "BACKEND"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "volume3d_predict.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.shape, args.spacing)))
        return
    from lesionseg.export import export_onnx
    from lesionseg.machine import describe_machine

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or untrained_model(Path(tmp) / "model.pt", args.patch, args.spacing)
        onnx = export_onnx(weights, Path(tmp) / "model.onnx")
        results = {}
        for backend, w in (("torch", weights), ("onnx", onnx)):
            done = subprocess.run([sys.executable, __file__, "--child", str(w), backend, "--shape",
                                   *map(str, args.shape), "--spacing", *map(str, args.spacing)],
                                  capture_output=True, text=True, check=True)
            results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
            print(backend, results[backend], flush=True)
        results["monai_sliding_window_torch"] = monai_blend(str(weights), args.shape, args.patch)
        print("monai", results["monai_sliding_window_torch"], flush=True)
    payload = {"machine": describe_machine(), "shape_xyz": args.shape, "spacing_xyz_mm": args.spacing,
               "patch": args.patch, "weights": str(args.weights or "untrained 3-D U-Net, base width 16"),
               "results": results,
               "ours_over_monai_torch": round(results["torch"]["voxels_per_s"]
                                              / results["monai_sliding_window_torch"]["voxels_per_s"], 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
