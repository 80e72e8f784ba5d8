"""Throughput of U-Net training and inference on this machine, peers side by side, in one run.

    .venv/bin/python benchmarks/throughput.py [--out benchmarks/results/NAME.json] [--steps 3] [--quick]

Rows: the bundled models (U-Net decoders on EfficientNet-Lite0), the plain U-Net at base 16 (cpu_fast) and the
seed model (base 64) at 256², batch 8, in fp32
NCHW, fp32 channels_last, bf16 autocast, bf16 + channels_last; ONNX Runtime inference; MONAI BasicUNet and
UNet at the same widths when monai is installed (`pip install monai==1.6.1`). FLOPs are counted with
torch.utils.flop_counter (not guessed) and compared with the machine's measured matmul and conv peaks.
Emulated bf16 (a CPU without native bf16) is ~10x slower than fp32; such rows are skipped unless --all.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lesionseg.config import ModelConfig
from lesionseg.losses import DiceBCELoss
from lesionseg.machine import describe_machine, native_bf16
from lesionseg.model_file import ModelFile
from lesionseg.models import build_model, count_parameters
from lesionseg.models.bundled import bundled_model_path

SIZE, BATCH = 256, 8
# The bundled models' architectures, read from their files (deep-supervision heads are off at inference)
SHIPPED = {f"lesionseg_{name}": ModelFile.read(bundled_model_path(name)).architecture
           for name in ("default", "cpu")}


def timed(fn, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def ort_matmul_gflops(n: int, steps: int) -> float:
    """ONNX Runtime's own GEMM (MLAS) on an n×n product: on some CPUs it beats torch's BLAS by far, so a
    peak measured with torch alone under-states the machine (rows then exceed 100 %)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a, b = (np.random.default_rng(i).standard_normal((n, n), dtype=np.float32) for i in (0, 1))
    return 2 * n**3 / timed(lambda: session.run(None, {"a": a, "b": b}), steps) / 1e9


def peaks(steps: int) -> dict:
    """The machine's measured fp32 peaks: the best of several GEMM sizes (torch and ONNX Runtime) and 3×3
    convolutions of several widths, each layout. The reference for '% of peak' is the maximum."""
    out = {}
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        out[f"matmul{n}_torch_gflops"] = 2 * n**3 / timed(lambda: a @ b, max(2, steps)) / 1e9
        out[f"matmul{n}_ort_gflops"] = ort_matmul_gflops(n, max(2, steps))
    for ch, hw in ((64, 128), (128, 64), (256, 32)):
        flops = 2 * 8 * ch * ch * 9 * hw * hw
        for fmt in (torch.contiguous_format, torch.channels_last):
            conv = torch.nn.Conv2d(ch, ch, 3, padding=1, bias=False).eval().to(memory_format=fmt)
            x = torch.randn(8, ch, hw, hw).contiguous(memory_format=fmt)
            with torch.no_grad():
                t = timed(lambda: conv(x), max(2, steps))
            tag = "cl" if fmt is torch.channels_last else "nchw"
            out[f"conv3x3_{ch}ch_{tag}_gflops"] = flops / t / 1e9
    if native_bf16():
        a, b = torch.randn(2048, 2048).bfloat16(), torch.randn(2048, 2048).bfloat16()
        out["matmul2048_bf16_gflops"] = 2 * 2048**3 / timed(lambda: a @ b, steps * 3) / 1e9
    return out


def count_flops(model, train: bool) -> float:
    """FLOPs per image, counted by torch's FlopCounterMode on the forward pass. A training step is counted
    as 3× forward (backward = grad of the input + grad of the weights, each ≈ one forward): the counter's
    own backward formulas treat a grouped (depthwise) convolution as dense — 49× too high on a 96-channel
    depthwise 3×3 — which would inflate the EfficientNet rows' GFLOP/s."""
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    forward = counter.get_total_flops() / BATCH
    return 3 * forward if train else forward


def bench_torch(model, mode: str, steps: int) -> dict:
    channels_last, bf16 = "cl" in mode, mode.startswith("bf16")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=fmt)
    y = (torch.rand(BATCH, 1, SIZE, SIZE) > 0.5).float()
    loss_fn = DiceBCELoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)

    def train_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    model.train()
    t_train = timed(train_step, steps)
    model.eval()
    t_infer = timed(infer_step, steps)
    return {"train_img_s": BATCH / t_train, "infer_img_s": BATCH / t_infer}


def bench_onnx(model, steps: int) -> dict:
    import onnxruntime as ort

    model = model.eval().to(memory_format=torch.contiguous_format)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.onnx.export(model, (torch.randn(2, 3, SIZE, SIZE),), str(path), dynamo=True,
                          input_names=["image"], dynamic_shapes=({0: batch},), external_data=False,
                          verbose=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((BATCH, 3, SIZE, SIZE), dtype=np.float32)
        t = timed(lambda: session.run(None, {"image": x}), steps)
        x1 = x[:1]
        t1 = timed(lambda: session.run(None, {"image": x1}), steps)
    return {"infer_img_s": BATCH / t, "infer_batch1_img_s": 1 / t1}


def monai_models(base: int) -> dict:
    try:
        from monai.networks.nets import BasicUNet, UNet
    except ImportError:
        return {}
    widths = tuple(base * 2**i for i in range(5))
    return {
        f"monai_basicunet_b{base}": lambda: BasicUNet(spatial_dims=2, in_channels=3, out_channels=1,
                                                      features=(*widths, base)),
        f"monai_unet_b{base}": lambda: UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=widths,
                                            strides=(2, 2, 2, 2), num_res_units=2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path,
                    default=Path("benchmarks/results") / f"{platform.node() or 'machine'}.json")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only the default width (base 16)")
    ap.add_argument("--all", action="store_true", help="also time emulated bf16")
    args = ap.parse_args()
    torch.manual_seed(0)
    bf16_ok = native_bf16() or args.all
    machine = describe_machine()
    peak = peaks(args.steps)
    print(f"machine: {machine}\npeaks (GFLOP/s): { {k: round(v, 1) for k, v in peak.items()} }", flush=True)
    bases = [16] if args.quick else [16, 64]
    modes = ["fp32", "fp32_cl"] + (["bf16", "bf16_cl"] if bf16_ok else [])
    rows = []
    for base in bases:
        candidates = {f"lesionseg_b{base}": lambda b=base: build_model(ModelConfig(base_width=b, depth=4))}
        if base == 16:  # the bundled models: U-Net decoders on the EfficientNet-Lite0 encoder
            candidates.update({name: lambda c=cfg: build_model(c) for name, cfg in SHIPPED.items()})
        candidates.update(monai_models(base))
        for name, make in candidates.items():
            model = make()
            train_flops, infer_flops = count_flops(model, True), count_flops(model, False)
            for mode in modes:
                r = bench_torch(make(), mode, args.steps)
                rows.append(
                    {"model": name, "base": base, "params": count_parameters(model), "runtime": "torch",
                     "mode": mode, **r, "train_gflop_per_img": train_flops / 1e9,
                     "infer_gflop_per_img": infer_flops / 1e9,
                     "train_gflops": r["train_img_s"] * train_flops / 1e9,
                     "infer_gflops": r["infer_img_s"] * infer_flops / 1e9}
                )
                print(json.dumps(rows[-1]), flush=True)
            if name.startswith("lesionseg"):
                r = bench_onnx(make(), args.steps)
                rows.append(
                    {"model": name, "base": base, "params": count_parameters(model), "runtime": "onnxruntime",
                     "mode": "fp32", **r, "infer_gflops": r["infer_img_s"] * infer_flops / 1e9}
                )
                print(json.dumps(rows[-1]), flush=True)
    peak_conv = max(peak.values())
    for r in rows:
        for k in ("train_gflops", "infer_gflops"):
            if k in r:
                r[k.replace("gflops", "fraction_of_peak")] = r[k] / peak_conv

    def best(model, key):
        vals = [r[key] for r in rows if r["model"] == model and key in r]
        return max(vals) if vals else None

    ratios = {}
    for name in SHIPPED:
        ours, theirs = best(name, "train_img_s"), best("monai_basicunet_b16", "train_img_s")
        if ours and theirs:
            ratios[f"train_{name}_vs_monai_basicunet_b16"] = ours / theirs
    for base in bases:
        ours = best(f"lesionseg_b{base}", "train_img_s")
        for peer in ("basicunet", "unet"):
            theirs = best(f"monai_{peer}_b{base}", "train_img_s")
            if ours and theirs:
                ratios[f"train_vs_monai_{peer}_same_width_b{base}"] = ours / theirs
        fp32 = next(
            (r["train_img_s"] for r in rows if r["model"] == f"lesionseg_b{base}" and r["mode"] == "fp32"),
            None,
        )
        if fp32:
            ratios[f"train_best_vs_fp32_nchw_b{base}"] = ours / fp32
    result = {
        "machine": machine,
        "peaks_gflops": peak,
        "size": SIZE,
        "batch": BATCH,
        "rows": rows,
        "ratios": ratios,
        "notes": []
        if bf16_ok
        else ["bf16 rows skipped: this CPU has no native bf16 (emulated runs ~10x slower)"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{'model':24} {'runtime':12} {'mode':8} {'train img/s':>11} {'infer img/s':>11} "
        f"{'train GF/s':>10} {'% peak':>7}"
    )
    for r in rows:
        print(f"{r['model']:24} {r['runtime']:12} {r['mode']:8} {r.get('train_img_s', float('nan')):11.2f} "
              f"{r['infer_img_s']:11.2f} {r.get('train_gflops', float('nan')):10.1f} "
              f"{100 * r.get('train_fraction_of_peak', float('nan')):6.1f}%")
    print("ratios:", json.dumps({k: round(v, 2) for k, v in ratios.items()}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
