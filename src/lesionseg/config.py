"""One configuration schema with defaults (the original recipe), read from YAML plus dotted overrides.

Unknown keys and values of the wrong type are refused with the key's name, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fixed ranges of the augmentations whose probability the augment.* keys set; both training paths
# (albumentations per image, data/batch_augment.py per batch) read them from here.
NOISE_STD = (0.01, 0.05)  # Gaussian noise std, fraction of the full intensity range
BLUR_KERNEL_SIZES = (3, 5)
BLUR_SIGMA = (0.5, 3.0)
ELASTIC_ALPHA, ELASTIC_SIGMA = 30, 6  # pixels
# The order both training paths apply the augment.* keys in, by stage; each path builds its steps by
# walking this. The geometric keys are one stage: the batch path folds them into a single resample.
AUGMENT_STAGES = (
    ("artifacts", ("hair", "ink")),  # first, at the source resolution, where real hair and ink are
    ("geometry", ("crop", "hflip", "vflip", "rot90", "elastic")),
    ("color_jitter", ("color_jitter",)),
    ("noise", ("noise",)),
    ("blur", ("blur",)),
)


@dataclass
class ModelConfig:
    arch: str = "unet"
    in_channels: int = 3
    out_channels: int = 1
    base_width: int = 64  # 64 gives the original 64→1024 widths
    depth: int = 4  # number of down-sampling steps
    upsample: str = "bilinear"  # or "transposed"
    attention: str = "none"  # or "cbam": CBAM on the skip features before concatenation
    deep_supervision: bool = False  # auxiliary heads on every decoder stage (training only)
    # or "efficientnet-lite0" (ImageNet-pretrained; lite1/lite2 if their weights are installed)
    encoder: str = "plain"
    # The decoder stage at full resolution, whose only skip is the RGB image (a third of the `cpu` model's
    # inference time). kept: trained and shipped. train_only (EfficientNet encoders with deep supervision):
    # trained, and left out of model.pt, where the 1/2-resolution head becomes the output (no measured
    # accuracy cost, docs/accuracy.md). none (EfficientNet encoders): never built; the 1/2-resolution logits
    # are upsampled ×2.
    full_resolution_stage: str = "kept"
    # 3-D networks (arch unet3d): a (z, y, x) kernel and stride per stage, the first stride [1, 1, 1]
    # (unset: 3×3×3 kernels and ×2 pooling along every axis). The planner sets them from the data's
    # spacing, as nnU-Net does (models/unet3d.pooling_plan).
    kernels: list[list[int]] | None = None
    strides: list[list[int]] | None = None
    # clicks: the network also reads a user's clicks, two input channels per structure after the image's
    # (positive and negative disks, clicks.py), and trains on simulated clicks. Without a click those
    # channels are zero and add nothing, so the same model segments on its own too.
    prompt: str = "none"
    prompt_channels: int = 0  # set from the data: 2 per structure with prompt clicks

    @property
    def dimensions(self) -> int:
        return 3 if self.arch == "unet3d" else 2


@dataclass
class DataConfig:
    image_size: int = 256  # square side the network sees; predictions go back to the original size
    val_fraction: float = 0.1  # used only when no --val-data or data.val_ids is given
    # A file of validation ids, one per line (a path, or a name inside the training folder): a dataset's
    # fixed split, used instead of a seeded carve when no --val-data is given.
    val_ids: str | None = None
    # A file of ids left out of both training and validation (a test set; `train --folds` names the
    # dataset's own val_ids.txt here, so no fold trains on it).
    exclude_ids: str | None = None
    split_seed: int = 42
    batch_size: int = 8
    num_workers: int = 0  # 2-core machines: augmenting in the main process is fastest
    cache: bool = True  # keep decoded uint8 images in memory when they fit
    cache_limit_gb: float = 4.0
    mask_threshold: int | None = None  # binarise masks with more than two levels at this value
    # Keep the decoded training set (uint8, resized to image_size) on the training device and augment whole
    # batches there (data/batch_augment.py). auto: only on an accelerator, and only when it fits
    # device_memory_fraction of the accelerator's free memory. false: albumentations per image on the CPU.
    on_device: str = "auto"
    device_memory_fraction: float = 0.25
    # Colour constancy applied to every image before augmentation and normalisation, recorded in the model
    # file so that evaluate/predict/serve apply it too: none, or shades_of_grey (intensity.py).
    color_constancy: str = "none"
    # The structures, when the folder has no dataset.json (labels.py): name → value in index label maps,
    # e.g. {heart: 1, lung: 2}. One sub-folder per structure under masks/ needs no declaration.
    labels: dict | None = None
    # auto: one sub-folder per structure → overlapping, declared index maps → exclusive, else binary
    label_mode: str = "auto"
    ignore_value: int | None = None  # a label-map value left out of the loss and the metrics (e.g. 255)
    # Physical size of a pixel in mm at the images' original size, for boundary metrics and areas when the
    # files do not say (DICOM PixelSpacing does); null: pixels.
    pixel_spacing_mm: float | None = None
    # Volumes (NIfTI / DICOM series; an imagesTr/ + labelsTr/ dataset): a 2-D network on slices, with
    # image_size the side of the square training patches the slices are padded and cropped to.
    # auto: dataset.json's modality (CT → clip + z-score over the dataset, anything else z-score per volume)
    modality: str = "auto"
    slice_axis: int | None = None  # null: each volume's coarsest axis (ties: the first)
    slice_context: int = 1  # k neighbouring slices as the network's channels (2.5-D); odd
    slice_spacing_mm: float | None = None  # in-plane spacing slices are resampled to; null: the data's median
    # volumes: at least this share of training slices show a structure; of 3-D patches, this share is
    # centred on one (each structure alike), the rest drawn anywhere
    foreground_oversample: float = 0.33
    # 3-D networks (model.arch unet3d): the patch (z, y, x voxels, RAS+ order) and the spacing volumes are
    # resampled to (null: planned from the training volumes, data/patch_sampler.py), and the patches an
    # epoch draws
    patch_size: list[int] | None = None
    target_spacing_mm: list[float] | None = None
    patches_per_epoch: int = 500


@dataclass
class AugmentConfig:
    crop_scale_min: float = 0.8
    crop_scale_max: float = 1.0
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    noise: float = 0.2
    blur: float = 0.2
    elastic: float = 0.0
    color_jitter: float = 0.0  # probability of brightness, contrast and saturation jitter
    color_jitter_strength: float = 0.2  # each factor drawn from 1 ± strength
    # Synthetic artefacts on the image only (data/artifacts.py): probability of 4–16 hairs, and of a
    # hand-drawn marker ring around the lesion.
    hair: float = 0.0
    ink: float = 0.0


@dataclass
class LossConfig:
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    lovasz_weight: float = 0.0  # Lovász hinge (a surrogate of per-image 1 − Jaccard) added to Dice + BCE
    batch_dice: bool = False  # Dice per structure over the whole batch, not per image (nnU-Net's `2d`)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-5
    eta_min: float = 1e-6
    # cosine: over trainer.max_epochs, stepped per epoch. cosine_time: linear warm-up over warmup_steps
    # batches, then cosine over the wall-clock budget trainer.max_minutes, stepped per batch, so a time
    # budget gives a complete schedule on any machine.
    schedule: str = "cosine"
    warmup_steps: int = 0
    # Exponential moving average of the weights (BatchNorm statistics included), updated every batch; 0 = off.
    # When on, validation scores both the EMA and the raw weights (val_mean_jaccard_raw in metrics.csv), and
    # selection and model.pt use the EMA weights. 0.998 averages over roughly the last 500 batches.
    ema_decay: float = 0.0
    # Warm the average up: its decay grows as (1 + n) / (10 + n) over the first updates until it reaches
    # ema_decay, so a short run's average does not keep its random start (plans turn it on).
    ema_warmup: bool = False
    # Per epoch, validate, select and save whichever of the EMA and the raw weights scores better (the
    # lagging average of a short run is not saved blindly); val_mean_jaccard is then the better score.
    # Needs trainer.selection: best (choosing on a fixed validation list would spoil it as a report).
    ema_selection: bool = False
    # model.prompt clicks: the click weights of the input convolution learn this many times faster (they
    # start at 0, and in a fine-tune at a small lr they would barely move; RITM trains them at 10x).
    click_lr_scale: float = 10.0


@dataclass
class TrainerConfig:
    max_epochs: int = 100
    patience: int = 15  # early stopping on validation mean Jaccard
    precision: str = "auto"  # auto | bf16 | fp32 ; auto = bf16 where the CPU/GPU has native bf16
    channels_last: bool = True
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget; stops cleanly after the current epoch
    limit_train_batches: int | None = None  # for smoke runs
    accelerator: str = "auto"
    deterministic: bool = False
    sync_batchnorm: bool = False  # multi-GPU: BatchNorm statistics over the global batch (GPU only)
    compile: bool = False  # torch.compile the model for training and validation (saved weights are the same)
    # Start from the weights of a model file or bundled model (fine-tuning); its architecture must be model.*.
    init_from: str | None = None
    # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    compile_mode: str = "default"
    # Which weights model.pt holds: best (the epoch with the best validation mean Jaccard) or last (the final
    # epoch, fixed in advance by the schedule): with `last` the validation data are only watched, never chosen
    # on, so they stay an honest report (a dataset's fixed validation list).
    selection: str = "best"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


COLOR_CONSTANCY = ("none", "shades_of_grey")  # implemented in intensity.py

CHOICES = {
    "model.arch": {"unet", "unet3d"},
    "model.upsample": {"bilinear", "transposed"},
    "model.attention": {"none", "cbam"},
    "model.full_resolution_stage": {"kept", "train_only", "none"},
    "model.prompt": {"none", "clicks"},
    "model.encoder": {"plain", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"},
    "trainer.precision": {"auto", "bf16", "fp32"},
    "data.on_device": {"auto", "true", "false"},
    "data.color_constancy": set(COLOR_CONSTANCY),
    "data.label_mode": {"auto", "binary", "exclusive", "overlapping"},
    "data.modality": {"auto", "MR", "CT"},
    "optim.schedule": {"cosine", "cosine_time"},
    "trainer.compile_mode": {"default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"},
    "trainer.accelerator": {"auto", "cpu", "gpu"},
    "trainer.selection": {"best", "last"},
}


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation`'s type, or raise UserError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(key, value, inner[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML reads `data.on_device: true` as a boolean; the choices are words
            return "true" if value else "false"
    elif annotation is dict:
        if isinstance(value, dict):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_check_value(key, v, typing.get_args(annotation)[0]) for v in value]
    else:  # pragma: no cover - schema only uses the types above
        return value
    expected = getattr(annotation, "__name__", annotation)
    raise UserError(f"config key '{key}': expected {expected}, got {value!r}")


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(names))
            raise UserError(f"unknown config key '{dotted}' (known here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key '{dotted}': expected a section (mapping), got {value!r}")
            _apply(current, value, prefix=f"{dotted}.")
        else:
            value = _check_value(dotted, value, hints[key])
            allowed = CHOICES.get(dotted)
            if allowed and value not in allowed:
                raise UserError(f"config key '{dotted}': {value!r} is not one of {sorted(allowed)}")
            setattr(obj, key, value)


def can_drop_full_resolution_stage(m: ModelConfig) -> bool:
    """Whether a model has a 1/2-resolution head to take over from its full-resolution stage."""
    return m.encoder != "plain" and m.full_resolution_stage != "none" and m.deep_supervision and m.depth >= 2


# Keys of earlier versions, read as today's: run directories and recipes written before keep loading.
def _legacy_keys(values: dict[str, Any]) -> dict[str, Any]:
    if not all(isinstance(values.get(k) or {}, dict) for k in ("model", "trainer")):
        return values  # _apply refuses a value given for a section
    model, trainer = dict(values.get("model") or {}), dict(values.get("trainer") or {})
    if "full_resolution_decoder" in model:
        model.setdefault("full_resolution_stage", "kept" if model.pop("full_resolution_decoder") else "none")
    if trainer.pop("drop_full_resolution_stage", False):
        model["full_resolution_stage"] = "train_only"
    out = dict(values)
    for name, section in (("model", model), ("trainer", trainer)):
        if section or name in values:
            out[name] = section
    return out


def _validate(cfg: Config) -> None:
    m, d, a = cfg.model, cfg.data, cfg.augment
    if m.base_width < 1 or m.depth < 1 or m.depth > 6:
        raise UserError("config: model.base_width must be ≥ 1 and model.depth in 1..6")
    if m.full_resolution_stage == "train_only" and not can_drop_full_resolution_stage(m):
        raise UserError("config key 'model.full_resolution_stage': train_only needs an EfficientNet encoder, "
                        "model.deep_supervision: true and model.depth ≥ 2")
    if m.full_resolution_stage == "none" and (m.encoder == "plain" or m.depth < 2):
        raise UserError("config key 'model.full_resolution_stage': none needs an EfficientNet encoder and "
                        "model.depth ≥ 2 (the plain encoder's full-resolution features feed all below)")
    if m.arch == "unet3d":
        _validate_3d(m)
    if d.image_size < 2**m.depth or d.image_size % (2**m.depth):
        raise UserError(f"config key 'data.image_size': must be a multiple of 2**model.depth = {2**m.depth}")
    if not 0.0 < d.val_fraction < 1.0:
        raise UserError("config key 'data.val_fraction': must be between 0 and 1")
    if not 0.0 <= d.foreground_oversample <= 1.0:
        raise UserError("config key 'data.foreground_oversample': a share in [0, 1]")
    if d.slice_context < 1 or d.slice_context % 2 == 0:
        raise UserError("config key 'data.slice_context': an odd number of slices (1, 3, 5, ...)")
    if d.slice_axis is not None and d.slice_axis not in (0, 1, 2):
        raise UserError("config key 'data.slice_axis': 0, 1, 2 or null (the coarsest axis)")
    for key, value in (("patch_size", d.patch_size), ("target_spacing_mm", d.target_spacing_mm)):
        if value is not None and (len(value) != 3 or min(value) <= 0):
            raise UserError(f"config key 'data.{key}': three positive numbers [z, y, x], or null")
    if d.patches_per_epoch < 1:
        raise UserError("config key 'data.patches_per_epoch': must be ≥ 1")
    if d.batch_size < 1:
        raise UserError("config key 'data.batch_size': must be ≥ 1")
    if not 0.0 < a.crop_scale_min <= a.crop_scale_max <= 1.0:
        raise UserError("config keys 'augment.crop_scale_min/max': need 0 < min ≤ max ≤ 1")
    for name in ("hflip", "vflip", "rot90", "noise", "blur", "elastic", "color_jitter", "hair", "ink"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            raise UserError(f"config key 'augment.{name}': a probability in [0, 1]")
    if not 0.0 <= a.color_jitter_strength < 1.0:
        raise UserError("config key 'augment.color_jitter_strength': must be in [0, 1)")
    if not 0.0 < d.device_memory_fraction <= 1.0:
        raise UserError("config key 'data.device_memory_fraction': must be in (0, 1]")
    if cfg.optim.schedule == "cosine_time" and not cfg.trainer.max_minutes:
        raise UserError(
            "config key 'optim.schedule': cosine_time needs a wall-clock budget, trainer.max_minutes"
        )
    if cfg.optim.ema_selection and (cfg.optim.ema_decay == 0 or cfg.trainer.selection != "best"):
        raise UserError("config key 'optim.ema_selection': needs optim.ema_decay > 0 and "
                        "trainer.selection: best")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise UserError("config key 'optim.ema_decay': must be in [0, 1) (0 = no weight averaging)")
    if min(cfg.loss.dice_weight, cfg.loss.bce_weight, cfg.loss.lovasz_weight) < 0:
        raise UserError("config keys 'loss.*_weight': must be ≥ 0")
    if cfg.optim.click_lr_scale <= 0:
        raise UserError("config key 'optim.click_lr_scale': must be > 0")
    if cfg.optim.warmup_steps < 0:
        raise UserError("config key 'optim.warmup_steps': must be ≥ 0")
    if cfg.trainer.max_minutes is not None and cfg.trainer.max_minutes <= 0:
        raise UserError("config key 'trainer.max_minutes': must be > 0")
    if cfg.trainer.max_epochs < 1:
        raise UserError("config key 'trainer.max_epochs': must be ≥ 1")


def _validate_3d(m: ModelConfig) -> None:
    if m.encoder != "plain" or m.attention != "none" or m.full_resolution_stage != "kept":
        raise UserError("config: model.arch unet3d is built plain (model.encoder plain, model.attention "
                        "none, model.full_resolution_stage kept)")
    for key, given, allowed in (("kernels", m.kernels, (1, 3)), ("strides", m.strides, (1, 2))):
        if given is None:
            continue
        if len(given) != m.depth + 1 or any(len(v) != 3 or set(v) - set(allowed) for v in given):
            raise UserError(f"config key 'model.{key}': {m.depth + 1} [z, y, x] triples (model.depth + 1) of "
                            f"{' or '.join(map(str, allowed))}")
    if m.strides is not None and list(m.strides[0]) != [1, 1, 1]:
        raise UserError("config key 'model.strides': the first stage's stride is [1, 1, 1]")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ["model.base_width=32", ...] into a nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override '{item}': expected KEY=VALUE, e.g. model.base_width=32")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults ← YAML file ← overrides, validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: a config file must be a mapping of sections")
        _apply(cfg, _legacy_keys(values))
    if overrides:
        given = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        _apply(cfg, _legacy_keys(given))
    _validate(cfg)
    return cfg


def diff_configs(a: Config, b: Config, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ."""
    out: list[str] = []

    def walk(x: dict, y: dict, pre: str) -> None:
        for k in x:
            if isinstance(x[k], dict) and isinstance(y[k], dict) and k != "labels":
                walk(x[k], y[k], f"{pre}{k}.")
            elif x[k] != y[k]:
                out.append(f"{pre}{k}")

    walk(a.to_dict(), b.to_dict(), prefix)
    return out


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
