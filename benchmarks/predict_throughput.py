"""`lesionseg predict` on a folder of full-size photos: wall clock and img/s per --workers setting.

    .venv/bin/python benchmarks/predict_throughput.py [--images ../shared/data/kvasir_seg/val/images]
        [--weights cpu] [--workers 1 2 4] [--limit 100]

Each setting is a fresh `lesionseg predict DIR --out TMP --weights W --workers N` process (start-up included,
as a user runs it); the masks of every setting are compared byte for byte with the first setting's. Without
the shared data, the bundled demo samples are upscaled to 1920×1080 copies. JSON to
benchmarks/results/predict_throughput.json with the machine's description (CPU flags included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lesionseg.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def full_size_samples(folder: Path, n: int) -> Path:
    """n 1920×1080 JPEGs made from the bundled samples (when the shared data is absent)."""
    from PIL import Image

    samples = sorted((ROOT / "src" / "lesionseg" / "assets" / "samples").glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.open(samples[i % len(samples)]).convert("RGB").resize((1920, 1080)).save(
            folder / f"photo_{i:04d}.jpg", quality=90
        )
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path,
                    default=ROOT.parent / "shared" / "data" / "kvasir_seg" / "val" / "images")
    ap.add_argument("--weights", default="cpu")
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--limit", type=int, default=100,
                    help="at most this many photos (linked into a temp folder)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_throughput.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "inputs"
        if args.images.is_dir():
            inputs.mkdir()
            for f in sorted(args.images.iterdir())[: args.limit]:
                os.symlink(f.resolve(), inputs / f.name)
            source = str(args.images)
        else:
            full_size_samples(inputs, args.limit)
            source = "bundled samples upscaled to 1920x1080"
        n = len(list(inputs.iterdir()))
        reference = None
        for workers in args.workers:
            out = tmp / f"out_{workers}"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lesionseg", "predict", str(inputs), "--out", str(out),
                            "--weights", args.weights, "--workers", str(workers)], check=True,
                           capture_output=True)
            seconds = time.perf_counter() - start
            masks = {p.name: p.read_bytes() for p in out.glob("*_mask.png")}
            reference = reference or masks
            rows.append({"workers": workers, "seconds": round(seconds, 2), "img_per_s": round(n / seconds, 2),
                         "masks_identical_to_first": masks == reference})
            print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["img_per_s"])
    result = {
        "machine": describe_machine(),
        "images": source,
        "n_images": n,
        "weights": args.weights,
        "rows": rows,
        "best_vs_workers_1": round(best["img_per_s"] / rows[0]["img_per_s"], 2)
        if rows[0]["workers"] == 1
        else None,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
