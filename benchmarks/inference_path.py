"""Speed of the whole inference path (read-free: decoded images in memory → masks), as users run it.

    .venv/bin/python benchmarks/inference_path.py [--weights W] [--images DIR] [--out JSON]

Rows: Segmenter with the torch backend (fp32; bf16 autocast where the CPU has native bf16) and the ONNX
Runtime backend, batch 1 and 8, with and without TTA (9 views); plus the cold start-up of `lesionseg
predict` on one image for each backend (process start to exit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--images", type=Path, default=ROOT / "src" / "lesionseg" / "assets" / "samples")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inference_path.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from lesionseg.export import export_onnx
    from lesionseg.inference import Segmenter
    from lesionseg.io import list_images, read_image

    files = list_images([args.images])
    images = [read_image(f) for f in files] * 4  # 16 images
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(args.weights, Path(tmp) / "m.onnx")
        for backend, weights in (("torch", args.weights), ("onnx", onnx_path)):
            for batch in (1, 8):
                for tta in (False, True):
                    seg = Segmenter.load(weights, backend=backend, batch_size=batch, tta=tta)
                    seg.predict_masks(images[:batch])  # warm-up
                    n = 8 if tta else len(images)
                    start = time.perf_counter()
                    seg.predict_masks(images[:n])
                    secs = time.perf_counter() - start
                    rows.append({"backend": backend, "batch": batch, "tta": tta, "img_s": n / secs})
                    print(json.dumps(rows[-1]), flush=True)
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "lesionseg.cli", "predict", str(files[0]), "--out",
                   str(Path(tmp) / backend)]
            if backend == "onnx":
                cmd += ["--weights", str(onnx_path)]
            elif args.weights:
                cmd += ["--weights", str(args.weights)]
            subprocess.run(cmd, check=True, capture_output=True)
            rows.append({"backend": backend, "cold_start_one_image_s": time.perf_counter() - start})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"images": [f.name for f in files], "rows": rows}, indent=2) + "\n")
    print("\n| backend | batch | TTA | img/s |\n| --- | --- | --- | --- |")
    for r in rows:
        if "img_s" in r:
            print(
                f"| {r['backend']} | {r['batch']} | {'9 views' if r['tta'] else 'off'} | {r['img_s']:.1f} |"
            )
    for r in rows:
        if "cold_start_one_image_s" in r:
            print(f"cold start + 1 image, {r['backend']}: {r['cold_start_one_image_s']:.2f} s")


if __name__ == "__main__":
    main()
