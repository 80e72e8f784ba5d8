"""Where a model's ONNX Runtime inference time goes: per operator type and the costliest nodes.

    .venv/bin/python benchmarks/onnx_profile.py --weights cpu runs/cpu_without_full_resolution_stage/model.pt
    \
        [--int8-calibration ../shared/data/isic2017/train/images] [--threads 1]

Exports each model (fp32, and int8 when a calibration folder is given) with `lesionseg export`'s functions,
runs one network-sized image 50 times under ORT's profiler and sums kernel time per operator type;
convolutions
are split into depthwise and dense. JSON to benchmarks/results/onnx_profile.json, a summary on stdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from lesionseg.export import export_int8, export_onnx
from lesionseg.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]

RUNS = 50


def profile(onnx_path: Path, threads: int, workdir: Path) -> dict:
    options = ort.SessionOptions()
    options.enable_profiling = True
    # the "optimized model is hardware specific" warning: known, it is only read here
    options.log_severity_level = 3
    options.profile_file_prefix = str(workdir / "profile")
    options.intra_op_num_threads = threads
    optimized = workdir / f"{onnx_path.stem}_optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    size = int(meta.get("image_size", 256))
    groups = {node.name: next((a.i for a in node.attribute if a.name == "group"), 1)
              for node in onnx.load(str(optimized)).graph.node}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    for _ in range(RUNS):
        session.run(None, {"image": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op, by_node = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name, op = e["name"][: -len("_kernel_time")], e["args"]["op_name"]
        if op in ("Conv", "FusedConv", "QLinearConv", "NchwcConv"):
            op = f"{op} ({'depthwise' if groups.get(name, 1) > 1 else 'dense'})"
        shape = json.dumps(e["args"].get("output_type_shape", ""))
        by_op[op] += e["dur"]
        by_node[f"{op} {name} -> {shape}"] += e["dur"]
    total = sum(by_op.values())
    return {"input": size, "threads": threads, "network_ms": round(total / RUNS / 1000, 3),
            "share_by_op": {op: round(d / total, 4) for op, d in by_op.most_common()},
            "top_nodes": {n: round(d / total, 4) for n, d in by_node.most_common(12)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", nargs="+", default=["cpu"])
    ap.add_argument("--int8-calibration", type=Path)
    ap.add_argument("--threads", type=int, default=1,
                    help="1 makes the shares independent of thread scheduling")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_profile.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, weights in enumerate(args.weights):
            variants = {"fp32": export_onnx(weights, tmp / f"m{i}.onnx")}
            if args.int8_calibration:
                export_int8(weights, tmp / f"m{i}_int8.onnx", args.int8_calibration)
                variants["int8"] = tmp / f"m{i}_int8.onnx"
            for kind, path in variants.items():
                row = {"weights": weights, "onnx": kind, **profile(path, args.threads, tmp)}
                rows.append(row)
                top = ", ".join(f"{op} {share:.0%}" for op, share in list(row["share_by_op"].items())[:5])
                print(f"{weights} {kind}: {row['network_ms']} ms/run ({args.threads} thread): {top}",
                      flush=True)
    args.out.write_text(
        json.dumps({"machine": describe_machine(with_torch=False), "runs_per_model": RUNS, "rows": rows},
                   indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
