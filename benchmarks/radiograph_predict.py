"""`predict` on 1024² chest radiographs with the bundled `chest` model: seconds per radiograph, end to end
(read the PNG, pre-process, network, five probability maps back at 1024², threshold, five mask PNGs and the
overlay with its legend written; and with --no-overlays), ONNX Runtime and torch side by side in the same run.

    .venv/bin/python benchmarks/radiograph_predict.py [--images ../shared/data/jsrt/images] [--n 20]

Per image: `run_predict` over a folder of N radiographs in one process (the model loaded once, as a service
or a batch job sees it), divided by N, median of 3 repeats; and one `lesionseg predict` process on one
radiograph (start-up and model load included), as a user runs it once. Without the shared data, synthetic
1024² grey pictures stand in. JSON to benchmarks/results/radiograph_predict.json with the machine's
description (CPU flags included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lesionseg.inference import Segmenter
from lesionseg.machine import describe_machine
from lesionseg.predict import run_predict

ROOT = Path(__file__).resolve().parents[1]


def inputs(folder: Path, source: Path, n: int) -> str:
    folder.mkdir(parents=True)
    if source.is_dir():
        for f in sorted(source.iterdir())[:n]:
            os.symlink(f.resolve(), folder / f.name)
        return str(source)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (1024, 1024), np.uint8)).save(folder / f"cxr_{i:03d}.png")
    return "synthetic 1024x1024 grey pictures"


def per_image_seconds(folder: Path, out: Path, backend: str, weights: str, n: int, overlays: bool,
                      repeats: int = 3) -> float:
    seg = Segmenter.load(weights, backend=backend)
    seg.predict(np.zeros((1024, 1024, 3), np.uint8))  # warm-up: first-call allocations, ORT graph set-up
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        run_predict([folder], out / f"{backend}_{overlays}_{r}", lambda: seg, progress=False,
                    on_failure=print, overlays=overlays)
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "jsrt" / "images")
    ap.add_argument("--weights", default="chest")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "radiograph_predict.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "in"
        source = inputs(folder, args.images, args.n)
        rows = {f"{backend}{'' if overlays else ' --no-overlays'}":
                round(per_image_seconds(folder, tmp, backend, args.weights, args.n, overlays), 4)
                for backend in ("onnx", "torch") for overlays in (True, False)}
        one = sorted(folder.iterdir())[0]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lesionseg", "predict", str(one), "--out", str(tmp / "cli"),
                        "--weights", args.weights, "--backend", "onnx"], check=True, capture_output=True)
        cli = time.perf_counter() - start
    result = {"machine": describe_machine(), "images": source, "n_images": args.n, "weights": args.weights,
              "seconds_per_radiograph_in_process": rows,
              "torch_over_onnx": round(rows["torch"] / rows["onnx"], 2),
              "with_overlays_over_without": round(rows["onnx"] / rows["onnx --no-overlays"], 2),
              "one_cli_process_onnx_seconds": round(cli, 2),
              "target": "≤ 0.2 s per 1024² radiograph end to end with ONNX Runtime",
              "target_met": {"with overlays": rows["onnx"] <= 0.2,
                             "masks only (--no-overlays)": rows["onnx --no-overlays"] <= 0.2}}
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
