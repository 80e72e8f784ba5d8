"""`lesionseg plan`: a dataset's fingerprint and a training plan derived from it by fixed rules
(docs/planning.md), sized to the minutes and the machine at hand.

The fingerprint reads every case once: count, sizes (and spacings for volumes), channels and modality,
intensity statistics of the foreground, the structures and their shares, empty masks, aspect ratios. The
plan is an ordinary config (`lesionseg train --config plan.yaml`). Its rules are deterministic: the same
fingerprint and the same measured speed give the same plan. The one measurement is a probe of training
speed on this machine: for photos, img/s per candidate input size (the largest that completes a full
schedule in the budget); for volumes, 3-D patches/s (3-D only where the budget trains enough patches).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, dump_config, load_config
from .errors import UserError
from .io.atomic import write_text
from .splits import DATASET_VAL_IDS

# Candidate square input sizes for photos, smallest first; the bundled recipes use 160 (skin), 192 (polyps)
# and 384 (radiographs).
PHOTO_SIZES = (128, 160, 192, 256, 320, 384, 512)
# a plan's schedule passes the training set at least this often in the budget: with it the probe picks the
# bundled recipes' sizes for skin (160) and radiographs (384) at 60 minutes on 2 cores (docs/planning.md)
MIN_EPOCHS = 25
SAMPLE_PER_CASE = 2000  # foreground intensities drawn per case for the statistics
SIDE_WORDS = ("left", "right")  # structures named by side: no flips
# the network of every bundled model (and of the probe): the best accuracy per CPU minute measured here
DESIGN = {"encoder": "efficientnet-lite0", "base_width": 8, "depth": 5, "deep_supervision": True}
# A 3-D plan (configs/unet3d_hippocampus_cpu.yaml's recipe: nnU-Net's 3d_fullres at half its widths; patch,
# spacing, kernels and pooling fitted to the training volumes when the run starts).
THREE_D = {"model": {"arch": "unet3d", "base_width": 16, "deep_supervision": True},
           "data": {"batch_size": 2, "patches_per_epoch": 250, "foreground_oversample": 0.33},
           "augment": {"elastic": 0.0},
           "optim": {"lr": 2e-3, "weight_decay": 3e-5, "eta_min": 1e-6, "schedule": "cosine_time",
                     "warmup_steps": 200, "ema_decay": 0.995, "ema_warmup": True}}
# 3-D is planned when the budget trains at least this many patches on this machine. Measured: at 5,750
# (60 min on 2 CPU cores) the 3-D U-Net still trailed the 2.5-D model on hippocampus (mean Dice 0.853 vs
# 0.866, docs/planning.md); nnU-Net's 3d_fullres trains on 500,000 (1,000 epochs of 250 batches of 2).
MIN_3D_PATCHES = 50_000
# and when the slices are at most this many times thicker than the in-plane spacing (thicker slices, as in
# cardiac cine MRI, have too little context across them for 3-D kernels)
MAX_3D_ANISOTROPY = 3.0


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "p00_5": float("nan"), "p99_5": float("nan")}
    lo, hi = np.percentile(values, (0.5, 99.5))
    return {
        "mean": round(float(values.mean()), 4),
        "std": round(float(values.std()), 4),
        "p00_5": round(float(lo), 4),
        "p99_5": round(float(hi), 4),
    }


def _spread(values) -> dict[str, float]:
    a = np.asarray(values, float)
    return {
        "min": round(float(a.min()), 4),
        "median": round(float(np.median(a)), 4),
        "max": round(float(a.max()), 4),
    }


def _photo_channels(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return len(im.getbands())
    except Exception:  # the readers behind read_image take what Pillow cannot open (16-bit TIFF, ...)
        return 3


def photo_fingerprint(folder: Path, pairs: list) -> dict[str, Any]:
    from .pairs import labels_of, load_pair

    if len(pairs) < 2:
        raise UserError(
            f"{folder}: {len(pairs)} image/mask pair; a plan needs at least 2 (one to validate on)"
        )
    labels = labels_of(pairs)
    rng = np.random.default_rng(0)
    sizes, channels, samples, empty = [], {}, [], 0
    shares = np.zeros(len(labels.structures))
    for pair in pairs:
        image, mask = load_pair(pair)
        sizes.append(image.shape[:2])
        channels.setdefault(_photo_channels(pair.image_path), pair.image_path)
        on = mask.reshape(*mask.shape[:2], -1) == 1 if mask.ndim == 3 else mask[..., None].astype(bool)
        shares += on.reshape(-1, on.shape[-1]).mean(0)
        fg = on.any(-1)
        empty += int(not fg.any())
        values = image[fg].astype(np.float32).mean(-1)
        if values.size > SAMPLE_PER_CASE:
            values = rng.choice(values, SAMPLE_PER_CASE, replace=False)
        samples.append(values)
    if len(channels) > 1:
        (a, pa), (b, pb) = list(channels.items())[:2]
        raise UserError(
            f"{folder}: mixed channel counts ({pa.name} has {a}, {pb.name} has {b}); convert the "
            "images to one kind"
        )
    if empty == len(pairs):
        raise UserError(f"{folder}: all {len(pairs)} masks are empty: nothing to learn")
    h, w = np.asarray(sizes, float).T
    return {
        "kind": "photos",
        "n_cases": len(pairs),
        "height": _spread(h),
        "width": _spread(w),
        "short_side": _spread(np.minimum(h, w)),
        "aspect_ratio": _spread(w / h),
        "channels": next(iter(channels)),
        "modality": "photo",
        "label_mode": labels.mode,
        "structures": {s.name: round(float(v / len(pairs)), 5) for s, v in zip(labels.structures, shares)},
        "empty_masks": empty,
        "foreground_intensity": _stats(np.concatenate(samples)),
    }


def volume_fingerprint(folder: Path, pairs: list) -> dict[str, Any]:
    from .inference.coverage import Slicing
    from .pairs import labels_of, read_modality, validate

    labels = labels_of(pairs)
    if len(pairs) < 2:
        raise UserError(f"{folder}: {len(pairs)} volume; a plan needs at least 2 (one to validate on)")
    items = validate(pairs, keep=True, keep_limit_bytes=None)
    rng = np.random.default_rng(0)
    shapes, spacings, planes, samples, empty = [], [], [], [], 0
    shares = np.zeros(len(labels.structures))
    for item in items:
        v = item.image
        shapes.append(v.array.shape)
        spacings.append(v.spacing)
        axis = Slicing().axis_for(v.spacing)
        planes.append([n * s for i, (n, s) in enumerate(zip(v.array.shape, v.spacing)) if i != axis])
        shares += [float((item.truth == s.value).mean()) for s in labels.structures]
        fg = item.truth > 0
        empty += int(not fg.any())
        values = v.array[fg]
        if values.size > SAMPLE_PER_CASE:
            values = rng.choice(values, SAMPLE_PER_CASE, replace=False)
        samples.append(values)
    shapes_a, spacing_a = np.asarray(shapes, float), np.asarray(spacings, float)
    return {
        "kind": "volumes",
        "n_cases": len(items),
        "modality": read_modality(folder) or "unknown",
        "shape": [_spread(shapes_a[:, i]) for i in range(3)],
        "spacing_mm": [_spread(spacing_a[:, i]) for i in range(3)],
        "plane_extent_mm": [_spread(np.asarray(planes)[:, i]) for i in range(2)],
        "channels": 1,
        "label_mode": labels.mode,
        "structures": {s.name: round(float(v / len(items)), 5) for s, v in zip(labels.structures, shares)},
        "empty_masks": empty,
        "foreground_intensity": _stats(np.concatenate(samples)),
    }


def fingerprint(data: str | Path, cfg: Config | None = None) -> dict[str, Any]:
    from .labels import Declared
    from .pairs import discover, is_volume_dataset

    folder = Path(data)
    if not folder.is_dir():
        raise UserError(f"{folder}: {'not a folder' if folder.exists() else 'data folder not found'}")
    d = (cfg or Config()).data
    declared = Declared.for_folder(folder, d.labels, d.label_mode, d.ignore_value)
    pairs = discover(folder, declared)
    if is_volume_dataset(folder):
        return volume_fingerprint(folder, pairs)
    return photo_fingerprint(folder, pairs)


def training_device() -> str:
    """Where the planned run will train: the GPU when there is one (the loop's accelerator `auto`)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def probe_img_per_s(size: int, channels: int, out_channels: int, batch: int, steps: int = 4) -> float:
    """Training img/s of the plan's network at `size`² on one of this machine's training devices (forward,
    backward, AdamW step; bf16 autocast on a GPU, as precision auto trains there), from the fastest of a few
    steps: a busy moment on a shared machine must not shrink the plan."""
    from .config import ModelConfig

    cfg = ModelConfig(**DESIGN, in_channels=channels, out_channels=out_channels)
    return batch * _steps_per_s(cfg, (batch, channels, size, size), steps)


def probe_patches_per_s(patch: tuple, out_channels: int, batch: int = 2, steps: int = 3) -> float:
    """Training patches/s of a 3-D plan's network (THREE_D) at `patch` voxels, as `probe_img_per_s`."""
    from .config import ModelConfig
    from .models.unet3d import pooling_plan

    kernels, strides = pooling_plan((1.0, 1.0, 1.0), patch)
    cfg = ModelConfig(**THREE_D["model"], in_channels=1, out_channels=out_channels, kernels=kernels,
                      strides=strides)
    return batch * _steps_per_s(cfg, (batch, 1, *patch), steps)


def _steps_per_s(cfg, shape: tuple[int, ...], steps: int) -> float:
    """Training steps/s of `cfg`'s network on random inputs of `shape`: the fastest step after a warm-up."""
    import torch

    from .models.build import build_model

    torch.manual_seed(0)
    device = training_device()
    layout = torch.channels_last if len(shape) == 4 else torch.contiguous_format
    model = build_model(cfg, pretrained=False).train().to(device, memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(*shape, device=device).to(memory_format=layout)
    fastest = float("inf")
    for step in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
            out = model(x)
            heads = out if isinstance(out, (list, tuple)) else [out]
            loss = sum(o.float().mean() for o in heads)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step allocates and warms the kernels
            fastest = min(fastest, time.perf_counter() - start)
    return 1.0 / fastest


@dataclasses.dataclass
class Plan:
    config: Config
    reasons: dict[str, str]
    probe: dict[str, float]


def _precision() -> tuple[str, str]:
    if training_device() == "cuda":
        return "auto", "auto: bf16 where the GPU has it"
    return "fp32", "fp32: a Lite0 U-Net step measured faster in fp32 than in bf16 on the 2-core machines"


def _sided(names) -> bool:
    return any(word in name.lower() for name in names for word in SIDE_WORDS)


def plan_photos(fp: dict, minutes: float, probe=probe_img_per_s, devices: int = 1) -> Plan:
    n_train = fp.get("n_train") or max(1, round(fp["n_cases"] * 0.9))
    multi = fp["label_mode"] != "binary"
    out_channels = len(fp["structures"]) + (1 if fp["label_mode"] == "exclusive" else 0)
    cap = max(PHOTO_SIZES[0], int(fp["short_side"]["median"]) // 32 * 32)
    measured, size = {}, PHOTO_SIZES[0]
    for s in (s for s in PHOTO_SIZES if s <= cap):
        batch = 16 if s <= 192 else 8
        rate = probe(s, 3, out_channels, batch) * devices  # data-parallel: each device takes a batch
        measured[str(s)] = round(rate, 2)
        if rate * minutes * 60 / n_train < MIN_EPOCHS:
            break
        size = s
    batch = 16 if size <= 192 else 8
    steps = max(1.0, measured.get(str(size), 1.0) * minutes * 60 / batch)
    ema = float(np.clip(1 - 20 / steps, 0.99, 0.998))
    sided = _sided(fp["structures"])
    flips = 0.0 if sided or multi else 0.5
    values = {
        "model": {**DESIGN, "full_resolution_stage": "train_only"},
        "data": {"image_size": size, "batch_size": batch},
        "augment": {
            "crop_scale_min": 0.7 if multi else 0.5,
            "crop_scale_max": 1.0,
            "hflip": flips,
            "vflip": flips,
            "rot90": 1.0 if flips else 0.0,
            "noise": 0.2,
            "blur": 0.2,
            "color_jitter": 0.5,
            "color_jitter_strength": 0.2,
        },
        "optim": {
            "lr": 8e-4 if multi else 5e-4,
            "weight_decay": 1e-5,
            "eta_min": 1e-6,
            "schedule": "cosine_time",
            "warmup_steps": 50,
            "ema_decay": round(ema, 4),
            "ema_warmup": True,
        },
        "trainer": {"precision": _precision()[0], "max_minutes": minutes, "max_epochs": 1000,
                    "patience": 1000},
    }
    reasons = {
        "image_size": f"largest of {list(PHOTO_SIZES)} up to the median short side ({cap}) whose probed "
        "speed "
        f"passes the ~{n_train} training images ≥ {MIN_EPOCHS} times in {minutes:g} min",
        "augment": "no flips or turns: structures named by side"
        if sided
        else (
            "no flips or turns: several structures in a fixed layout"
            if multi
            else "flips and 90° turns: one structure, no preferred orientation"
        ),
        "ema_decay": f"1 - 20 / (the ~{steps:.0f} steps the budget holds), within [0.99, 0.998]",
        "precision": _precision()[1],
    }
    return Plan(load_config(None, values), reasons, measured)


def plan_volumes(fp: dict, minutes: float, probe=probe_patches_per_s) -> Plan:
    """3-D patches where the data are near-isotropic and the budget trains MIN_3D_PATCHES of them on this
    machine (`probe`: patches/s of the 3-D network); else 2.5-D slices, and the reason says why."""
    spacings = [s["median"] for s in fp["spacing_mm"][:3]]
    anisotropy = max(spacings) / min(spacings)
    if anisotropy > MAX_3D_ANISOTROPY:
        why = f"slices {anisotropy:.1f}x thicker than their pixels (3-D above {MAX_3D_ANISOTROPY:g}x)"
        return _plan_slices(fp, minutes, why, {})
    from .data.patch_sampler import capped_patch

    patch = capped_patch([s["median"] for s in fp["shape"][:3]])
    structures = len(fp["structures"]) + (fp["label_mode"] != "binary")
    rate = probe(patch, structures)
    patches = rate * minutes * 60
    measured = {"patches_per_s": round(rate, 3)}
    why = (f"{patches:,.0f} 3-D patches of {'x'.join(map(str, patch))} fit in {minutes:g} min on this "
           f"machine ({rate:.3g}/s measured); 3-D from {MIN_3D_PATCHES:,}")
    if patches < MIN_3D_PATCHES:
        return _plan_slices(fp, minutes, why, measured)
    values = {**THREE_D, "trainer": {"precision": _precision()[0], "max_minutes": minutes, "max_epochs": 1000,
                                     "patience": 1000}}
    reasons = {"network": f"3-D U-Net on patches of the median case (fitted when training starts): {why}"}
    return Plan(load_config(None, values), reasons, measured)


def _plan_slices(fp: dict, minutes: float, not_3d: str, measured: dict) -> Plan:
    spacing = min(s["median"] for s in fp["spacing_mm"][:3])
    extent = max(e["max"] for e in fp["plane_extent_mm"])
    typical = max(e["median"] for e in fp["plane_extent_mm"])
    # small crops (under 96 px across) are zoomed ×2 in-plane, so the encoder's stride-2 stem keeps
    # features at the data's own resolution
    slice_spacing = spacing / 2 if extent / spacing < 96 else spacing
    # nnU-Net's patch: the median case; larger slices are cropped in training and whole at inference
    patch = int(np.clip(round(typical / slice_spacing / 32) * 32, 64, 512))
    values = {
        "model": {**DESIGN, "full_resolution_stage": "kept"},
        "data": {
            "image_size": patch,
            "batch_size": 32 if patch <= 96 else 8,
            "slice_context": 3,
            "slice_spacing_mm": round(slice_spacing, 4),
        },
        "loss": {"batch_dice": True},
        "augment": {
            "crop_scale_min": 0.8,
            "crop_scale_max": 1.0,
            "hflip": 0.0,
            "vflip": 0.0,
            "rot90": 0.0,
            "noise": 0.2,
            "blur": 0.1,
        },
        "optim": {
            "lr": 1e-3,
            "weight_decay": 1e-5,
            "eta_min": 1e-6,
            "schedule": "cosine_time",
            "warmup_steps": 100,
            "ema_decay": 0.995,
            "ema_warmup": True,
        },
        "trainer": {"precision": _precision()[0], "max_minutes": minutes, "max_epochs": 1000,
                    "patience": 1000},
    }
    reasons = {
        "network": f"2.5-D U-Net on slices (3 as channels), not 3-D: {not_3d}",
        "slice_spacing_mm": f"the finest median spacing {spacing:g} mm"
        + (", halved: slices under 96 px across" if slice_spacing < spacing else ""),
        "image_size": f"the median in-plane extent ({typical:g} mm) at {slice_spacing:g} mm, to the "
        "nearest multiple of 32 (64 to 512)",
        "augment": "no flips or turns: anatomy has sides",
        "batch_dice": "Dice over the batch, as nnU-Net's 2d: most slices hold none of a volume's structures",
    }
    return Plan(load_config(None, values), reasons, measured)


def with_split(plan: Plan, folder: Path) -> Plan:
    """A dataset's own validation list (val_ids.txt) is used and never chosen on (the last epoch is kept);
    otherwise a seeded tenth is carved off and selection picks the best epoch, EMA or raw weights."""
    values = plan.config.to_dict()
    if (folder / DATASET_VAL_IDS).is_file():
        values["data"]["val_ids"], values["trainer"]["selection"] = DATASET_VAL_IDS, "last"
        values["optim"]["ema_selection"] = False
        why = f"the dataset's {DATASET_VAL_IDS}, never chosen on: model.pt is the last epoch"
    else:
        values["optim"]["ema_selection"] = True
        why = "a seeded 10% carved off; the best epoch, and the better of the EMA and raw weights, are kept"
    return Plan(load_config(None, values), {**plan.reasons, "validation": why}, plan.probe)


def plan_evidence(folder: Path) -> dict[str, Any]:
    """What a model card shows of the plan in `folder` (`train --auto`'s OUT/plan/): the fingerprint and
    each rule's reason; nothing when there is no plan."""
    fp, plan = Path(folder) / "fingerprint.json", Path(folder) / "plan.yaml"
    if not (fp.is_file() and plan.is_file()):
        return {}
    reasons = [line[2:].strip() for line in plan.read_text().splitlines() if line.startswith("# ")]
    return {"fingerprint": json.loads(fp.read_text()), "plan": reasons}


def make_plan(data: str | Path, out: str | Path, minutes: float = 60.0,
              devices: int = 1) -> tuple[dict, Plan]:
    """Write DIR/fingerprint.json and DIR/plan.yaml; returns both. `devices`: how many the run trains on
    (data-parallel: the probed speed of one, times that many)."""
    if minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {minutes}")
    fp = fingerprint(data)
    ids = Path(data) / DATASET_VAL_IDS
    if ids.is_file():
        fp["n_train"] = fp["n_cases"] - len(ids.read_text().split())
    if devices < 1:
        raise UserError(f"--devices must be ≥ 1, got {devices}")
    plan = plan_volumes(fp, minutes) if fp["kind"] == "volumes" else plan_photos(fp, minutes, devices=devices)
    plan = with_split(plan, Path(data))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create output folder ({exc.strerror})") from None
    fp = {**fp, "data": str(data), "budget_minutes": minutes, "devices": devices,
          "device": training_device(), "probe": plan.probe}
    write_text(out / "fingerprint.json", json.dumps(fp, indent=2) + "\n")
    header = "".join(f"# {key}: {why}\n" for key, why in plan.reasons.items())
    write_text(
        out / "plan.yaml",
        f"# lesionseg plan for {data} ({minutes:g} min)\n{header}{dump_config(plan.config)}",
    )
    return fp, plan
