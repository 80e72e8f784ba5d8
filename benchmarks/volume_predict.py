"""Volumes, slice by slice, with a bundled volume model (`hippocampus`, or `heart` on ACDC); peers side by
side in the same run.

1. A volume of the validation list end to end (read the NIfTI, z-score, every slice through the network, the
   label volume stacked back, the NIfTI label map written): seconds per volume with ONNX Runtime and with
   torch, and MONAI's `SliceInferer` running the same torch network on the same normalised volumes (MONAI
   gives the probabilities only; reading, normalising and writing are ours in both).
2. A 512×512×300 CT-sized volume: slices per second through `segment_volume`, against the 2-D batch path
   (`Segmenter.predict_batch` on the same 512² images, already cut), ONNX Runtime; and the peak memory
   the volume path adds beyond the volume itself.

    .venv/bin/python benchmarks/volume_predict.py [--data ../shared/data/hippocampus] [--n 20]
    .venv/bin/python benchmarks/volume_predict.py --data ../shared/data/acdc --weights heart --ct-slices 0 \
        --out benchmarks/results/volume_predict_acdc.json

`--ct-slices 0` leaves part 2 out. JSON to benchmarks/results/volume_predict.json with the machine's
description (CPU flags included).
Without the shared data, synthetic 40×50×36 volumes stand in.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lesionseg.inference import Segmenter
from lesionseg.inference.volume_coverage import segment_volume
from lesionseg.io.registry import read_volume
from lesionseg.io.volumes import Volume, write_nifti_labels
from lesionseg.machine import describe_machine
from lesionseg.memory import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]


def volume_files(data: Path, n: int, tmp: Path) -> tuple[list[Path], str]:
    ids = (data / "val_ids.txt").read_text().split() if (data / "val_ids.txt").is_file() else []
    if ids:
        return [data / "imagesTr" / f"{i}.nii.gz" for i in ids[:n]], f"{data} (validation ids)"
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        v = Volume(f"v{i}", rng.normal(100, 20, (40, 50, 36)).astype(np.float32), np.eye(4), tmp)
        path = tmp / f"synthetic_{i}.nii.gz"
        write_nifti_labels(path, np.zeros(v.array.shape, np.uint8), v)
        files.append(path)
    return files, "synthetic 40x50x36 volumes"


def end_to_end(seg: Segmenter, files: list[Path], out: Path, repeats: int = 3) -> float:
    segment_volume(seg, read_volume(files[0]))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for f in files:
            volume = read_volume(f)
            write_nifti_labels(out / f"{volume.id}_labels.nii.gz", segment_volume(seg, volume), volume)
        times.append((time.perf_counter() - start) / len(files))
    return statistics.median(times)


def monai_slice_inferer(weights: str, files: list[Path], repeats: int = 3) -> float:
    """MONAI's SliceInferer on the same network, fed the same normalised volumes (2.5-D context as channels
    is ours: MONAI sees the k-slice stack as channels of a 3-D tensor and slides along the slice axis)."""
    import torch
    from monai.inferers import SliceInferer

    seg = Segmenter.load(weights, backend="torch")
    net = seg.backend.model
    pre = seg.backend.preprocessing
    k = pre.slicing.context
    volumes = []
    for f in files:
        v = read_volume(f)
        axis = pre.slicing.axis_for(v.spacing)
        x = np.moveaxis(pre.intensity.apply(v.array), axis, 0)  # (slices, rows, cols)
        stacked = np.stack(
            [
                np.take(x, np.clip(np.arange(len(x)) + d, 0, len(x) - 1), axis=0)
                for d in range(-(k // 2), k // 2 + 1)
            ]
        )  # (k, slices, rows, cols)
        volumes.append(torch.from_numpy(np.ascontiguousarray(stacked))[None])
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for x in volumes:
                inferer = SliceInferer(
                    roi_size=tuple(x.shape[3:]), sw_batch_size=seg.batch_size, spatial_dim=0, progress=False
                )
                logits = inferer(x, net)
                logits.argmax(1)
            times.append((time.perf_counter() - start) / len(volumes))
    return statistics.median(times)


def ct_throughput(weights: str, slices: int = 300, side: int = 512) -> dict:
    seg = Segmenter.load(weights, backend="onnx")
    rng = np.random.default_rng(0)
    spacing = seg.backend.preprocessing.slicing.spacing_mm
    affine = np.diag([spacing[0], spacing[1], 2.5, 1.0])  # thick slices: the last axis is the slice axis
    volume = Volume("ct", rng.normal(0, 300, (side, side, slices)).astype(np.float32), affine, Path("ct"))
    seg.predict_batch([np.zeros((side, side, 3), np.float32)] * seg.batch_size)  # warm-up: a full batch
    before = peak_rss_mb()
    start = time.perf_counter()
    segment_volume(seg, volume)
    volume_s = time.perf_counter() - start
    added = peak_rss_mb() - before
    normalised = seg.backend.preprocessing.intensity.apply(volume.array)
    images = list(seg.backend.preprocessing.slicing.images(normalised, 2))
    start = time.perf_counter()
    for i in range(0, len(images), seg.batch_size):
        seg.predict_batch(images[i : i + seg.batch_size])
    batch_s = time.perf_counter() - start
    return {
        "shape": [side, side, slices],
        "volume_path_slices_per_s": round(slices / volume_s, 2),
        "batch_path_slices_per_s": round(slices / batch_s, 2),
        "volume_over_batch_throughput": round(batch_s / volume_s, 3),
        "volume_bytes_mb": round(volume.array.nbytes / 2**20, 1),
        "peak_rss_added_mb": round(added, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--weights", default="hippocampus")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--ct-slices", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "volume_predict.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files, source = volume_files(args.data, args.n, tmp)
        rows = {
            backend: round(end_to_end(Segmenter.load(args.weights, backend=backend), files, tmp), 4)
            for backend in ("onnx", "torch")
        }
        rows["monai SliceInferer (torch, network only)"] = round(monai_slice_inferer(args.weights, files), 4)
    ct = ct_throughput(args.weights, args.ct_slices) if args.ct_slices else None
    # the end-to-end targets per dataset: a hippocampus crop in 0.1 s, an ACDC frame in 0.5 s
    limit = {"hippocampus": 0.1, "acdc": 0.5}.get(args.data.name)
    targets = {f"{args.data.name} volume end to end with ONNX Runtime ≤ {limit} s": rows["onnx"] <= limit} \
        if limit else {}
    if ct is not None:
        targets["CT slices at the 2-D batch path's throughput (≥ 0.95 of it)"] = \
            ct["volume_over_batch_throughput"] >= 0.95
    result = {
        "machine": describe_machine(),
        "volumes": source,
        "n_volumes": len(files),
        "weights": args.weights,
        f"seconds_per_{args.data.name}_volume": rows,
        "torch_over_onnx": round(rows["torch"] / rows["onnx"], 2),
        "monai_over_ours_onnx": round(rows["monai SliceInferer (torch, network only)"] / rows["onnx"], 2),
        **({"ct_volume": ct} if ct is not None else {}),
        "targets": targets,
    }
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
