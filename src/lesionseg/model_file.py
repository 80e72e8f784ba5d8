"""The model file: what a lesionseg model is, beyond its weights, in one type.

`ModelFile` holds the architecture (`ModelConfig`), the pre-processing every input needs (`Preprocessing`),
the card (provenance, figures, and the inference defaults the model asks for) and the weights. It is read
and written here only: `save_model` / `load_model` (below), training's model.pt, the bundling script, the
ONNX export's metadata and both inference backends go through it.

Format versions (`format_version` in the file): 1 is the original layout; 2 adds
`preprocess.color_constancy`; 3 adds `labels` (several structures, labels.py); 4 adds `preprocess.intensity`
and `preprocess.slicing` (a model for volumes); 5 adds `members`, an ensemble of that many networks of the one
architecture (`train --folds`; weights keyed `members.<i>.`); 6 adds `preprocess.patching` (a 3-D network
covering volumes in a sliding window). A file is written with the
lowest version that can hold what it records, so
readers older than a feature still read every file that does not use it, and refuse those that do. Every
version has a reader in `_READERS`. Importing this module does not import torch (the ONNX path needs it
without).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from .errors import UserError
from .labels import Labels

FORMAT = "lesionseg-model"
FORMAT_VERSION = 6
# The input size assumed for an ONNX file whose metadata does not say (exported by another tool).
FALLBACK_IMAGE_SIZE = 256


def training_recipe(card: dict[str, Any]) -> dict[str, Any]:
    """The config a model was trained with, as its card records it: `recipe` on a run's model.pt,
    `recipe_config` on a bundled one (whose `recipe` is a sentence); {} when the card records none. The one
    reader of a model's recorded training settings: its pixel spacing, its split."""
    for key in ("recipe", "recipe_config"):
        if isinstance(card.get(key), dict):
            return card[key]
    return {}


def recorded_pixel_spacing(card: dict[str, Any]) -> float | None:
    """The pixel size in mm of the photos a model was trained on (`data.pixel_spacing_mm`), if recorded."""
    data = training_recipe(card).get("data")
    value = data.get("pixel_spacing_mm") if isinstance(data, dict) else None
    return float(value) if value else None


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What every input goes through before the network. Photos: resized to image_size², the
    colour-constancy step (intensity.py), then normalised with mean/std (of [0, 1] intensities).
    Volumes (`intensity` set): normalised by modality (intensity.py), then either cut into slices
    (`slicing`) at the model's in-plane spacing and fed at that size (image_size 0), or resampled to the
    model's spacing and covered by patches in a sliding window (`patching`, a 3-D network)."""

    image_size: int = FALLBACK_IMAGE_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color_constancy: str = "none"
    intensity: Any = None  # intensity.Intensity, for volumes
    slicing: Any = None  # inference.coverage.Slicing, for volumes through a 2-D network
    patching: Any = None  # inference.coverage.Patching, for volumes through a 3-D network

    # What the network is and how it covers a case, said outright (derived from the settings above, so
    # that every file of every format version says it the same way).
    @property
    def dimensions(self) -> int:
        return 3 if self.patching is not None else 2

    @property
    def coverage(self) -> str:
        """How the network covers a case (inference/coverage.py): "whole" (the image, resized to
        `input_size`), "slices" (a volume's slices, each fed at the model's in-plane spacing) or "patches"
        (a volume at the model's spacing, in a sliding window of `input_size` patches)."""
        if self.patching is not None:
            return "patches"
        return "slices" if self.slicing is not None else "whole"

    @property
    def covers_volumes(self) -> bool:
        return self.coverage != "whole"

    @property
    def input_size(self) -> tuple[int, ...] | None:
        """The network's input: (rows, columns), a 3-D network's patch (z, y, x), or None where each input
        is fed at its own size (slices)."""
        if self.patching is not None:
            return tuple(self.patching.patch)
        return (self.image_size, self.image_size) if self.image_size else None

    @property
    def channels(self) -> dict[str, Any]:
        """The network's input channels and their normalisation."""
        if self.patching is not None:
            return {"count": self.patching.channels, "from": "the volume",
                    "normalisation": self.intensity.to_dict()}
        if self.covers_volumes:
            return {"count": self.slicing.channels, "from": f"{self.slicing.context} neighbouring slice(s)",
                    "normalisation": self.intensity.to_dict()}
        return {"count": 3, "from": "RGB", "normalisation": {"mean": list(self.mean), "std": list(self.std),
                                                            "color_constancy": self.color_constancy}}

    def describe(self) -> dict[str, Any]:
        """What the network is, for people (`lesionseg info`): dimensionality, input size, channels,
        coverage."""
        return {"dimensions": self.dimensions, "input_size": self.input_size, "coverage": self.coverage,
                "channels": self.channels,
                **({"slicing": self.slicing.to_dict()} if self.slicing is not None else {}),
                **({"patching": self.patching.to_dict()} if self.patching is not None else {})}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}
        # only then do version-1 readers, which would skip the step, need refusing
        if self.color_constancy != "none":
            out["color_constancy"] = self.color_constancy
        if self.covers_volumes:
            out["intensity"] = self.intensity.to_dict()
        for key in ("slicing", "patching"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        return out

    @property
    def format_version(self) -> int:
        """The lowest file format that records these settings."""
        if self.patching is not None:
            return 6
        if self.covers_volumes:
            return 4
        return 2 if self.color_constancy != "none" else 1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Preprocessing":
        intensity = slicing = patching = None
        if values.get("slicing") is not None or values.get("patching") is not None:
            from .inference.coverage import Patching, Slicing
            from .intensity import Intensity

            intensity = Intensity.from_dict(values.get("intensity") or {})
            slicing = Slicing.from_dict(values["slicing"]) if values.get("slicing") is not None else None
            patching = Patching.from_dict(values["patching"]) if values.get("patching") is not None else None
        return cls(image_size=int(values.get("image_size", FALLBACK_IMAGE_SIZE)),
                   mean=tuple(float(v) for v in values.get("mean", IMAGENET_MEAN)),
                   std=tuple(float(v) for v in values.get("std", IMAGENET_STD)),
                   color_constancy=str(values.get("color_constancy", "none")),
                   intensity=intensity, slicing=slicing, patching=patching)

    def transform(self):
        """The numpy pre-processing (`EvalTransform`) for these settings."""
        from .data.preprocess import EvalTransform

        return EvalTransform(self.image_size, self.mean, self.std, self.color_constancy,
                             normalize=not self.covers_volumes)


@dataclasses.dataclass
class ModelFile:
    architecture: ModelConfig | None  # None for an ONNX file: the graph is the architecture
    preprocessing: Preprocessing
    card: dict[str, Any] = dataclasses.field(default_factory=dict)
    state_dict: dict[str, Any] | None = None  # torch tensors; None for an ONNX file
    path: Path | None = None
    labels: Labels = dataclasses.field(default_factory=Labels.binary)
    members: int = 1  # > 1: an ensemble (models/ensemble.py) of that many networks of `architecture`
    onnx_click_channels: int = 0  # an ONNX file's click inputs (a torch file's architecture says it)

    @property
    def click_channels(self) -> int:
        """The network's click input channels (model.prompt clicks), 0 when it takes none."""
        if self.architecture is None:
            return self.onnx_click_channels
        return self.architecture.prompt_channels

    @property
    def format_version(self) -> int:
        """The lowest file format that records what this file holds."""
        return max(5 if self.members > 1 else 1, 3 if self.labels.multi else 1,
                   self.preprocessing.format_version)

    @classmethod
    def ensemble(cls, files: list["ModelFile"], card: dict[str, Any]) -> "ModelFile":
        """One file of several trained on the same plan (the folds): their architecture, pre-processing
        and structures must agree."""
        first = files[0]
        for other in files[1:]:
            for what in ("architecture", "preprocessing", "labels"):
                if getattr(other, what) != getattr(first, what):
                    raise UserError(f"{other.path}: its {what} differs from {first.path}'s: not one ensemble")
        state = {f"members.{i}.{k}": v for i, f in enumerate(files) for k, v in f.state_dict.items()}
        return cls(first.architecture, first.preprocessing, card, state, None, first.labels, len(files))

    @property
    def inference_defaults(self) -> dict[str, Any]:
        """What the model asks inference to do unless told otherwise: its card's `inference` entry (TTA
        scales, written when TTA won on the model's carved split)."""
        return dict(self.card.get("inference") or {})

    # torch model files

    @classmethod
    def from_model(cls, model, architecture: ModelConfig, preprocessing: Preprocessing,
                   card: dict[str, Any] | None = None, labels: Labels | None = None) -> "ModelFile":
        return cls(architecture, preprocessing, dict(card or {}), dict(model.state_dict()),
                   labels=labels or Labels.binary())

    @classmethod
    def read(cls, path: str | Path) -> "ModelFile":
        import torch

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: model file not found")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt / truncated / foreign files
            raise UserError(f"{path}: not a readable lesionseg model file ({type(exc).__name__})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise UserError(f"{path}: not a lesionseg model file (use the run's model.pt, not a checkpoint)")
        version = payload.get("format_version", 1)
        if version not in _READERS:
            raise UserError(f"{path}: written by a newer lesionseg (format {version})")
        try:
            return _READERS[version](payload, path)
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(f"{path}: model file not understood ({exc})") from None

    def write(self, path: str | Path, fp16_weights: bool = False) -> None:
        """Atomically; `fp16_weights` stores floating-point weights in fp16 (they are read back as fp32)."""
        import torch

        from .io import atomic_path

        state = {k: (v.half() if fp16_weights and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in (self.state_dict or {}).items()}
        payload = {"format": FORMAT, "format_version": self.format_version,
                   "model": _architecture_on_disk(self.architecture),
                   "preprocess": self.preprocessing.to_dict(), "card": self.card, "state_dict": state}
        if self.labels.multi:
            payload["labels"] = self.labels.to_dict()
        if self.members > 1:
            payload["members"] = self.members
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def build(self, device="cpu"):
        """The network with these weights (fp32), in eval mode."""
        from .models.build import build_model
        from .models.parts import with_prompted_input_weights

        model = build_model(self.architecture, pretrained=False)
        if self.members > 1:
            from .models.ensemble import Ensemble

            others = [build_model(self.architecture, pretrained=False) for _ in range(self.members - 1)]
            model = Ensemble([model, *others], exclusive=self.labels.mode == "exclusive")
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        if self.architecture.prompt_channels:  # files whose one input convolution read clicks too
            state = with_prompted_input_weights(state, model.state_dict())
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "shape mismatch"
            raise UserError(f"{self.path}: weights do not match the model config ({first})") from None
        return model.eval().to(device)

    # ONNX metadata: flat string pairs

    def onnx_metadata(self) -> dict[str, str]:
        p = self.preprocessing
        meta = {"image_size": str(p.image_size), "mean": json.dumps(list(p.mean)),
                "std": json.dumps(list(p.std)), "card": json.dumps(self.card, default=str),
                "producer": "lesionseg", "color_constancy": p.color_constancy}
        if self.labels.multi:
            meta["labels"] = json.dumps(self.labels.to_dict())
        if self.click_channels:  # the graph's input holds the image's channels, then these
            meta["click_channels"] = str(self.click_channels)
        for key, value in p.to_dict().items():
            if key in ("intensity", "slicing", "patching"):
                meta[key] = json.dumps(value)
        return meta

    @classmethod
    def from_onnx_metadata(cls, meta: dict[str, str], path: Path | None = None) -> "ModelFile":
        values: dict[str, Any] = {"color_constancy": meta.get("color_constancy", "none")}
        if "image_size" in meta:
            values["image_size"] = meta["image_size"]
        for key in ("mean", "std", "intensity", "slicing", "patching"):
            if key in meta:
                values[key] = json.loads(meta[key])
        labels = Labels.from_dict(json.loads(meta["labels"])) if "labels" in meta else Labels.binary()
        card = json.loads(meta.get("card", "{}"))
        return cls(None, Preprocessing.from_dict(values), card, None, path, labels,
                   onnx_click_channels=int(meta.get("click_channels", 0)))


class FileView:
    """What a holder of a model file (`self.file`: a loaded network, a backend) reads from it."""

    file: ModelFile

    @property
    def preprocessing(self) -> Preprocessing:
        return self.file.preprocessing

    @property
    def image_size(self) -> int:
        return self.file.preprocessing.image_size

    @property
    def card(self) -> dict[str, Any]:
        return self.file.card

    @property
    def path(self) -> Path | None:
        return self.file.path

    @property
    def labels(self) -> Labels:
        return self.file.labels


@dataclasses.dataclass
class LoadedModel(FileView):
    """A network ready for inference and the model file it came from (what it needs to be fed correctly)."""

    model: Any  # torch.nn.Module
    file: ModelFile

    @property
    def config(self) -> ModelConfig:
        return self.file.architecture

    @property
    def color_constancy(self) -> str:
        return self.file.preprocessing.color_constancy


def save_model(path: str | Path, model, cfg: ModelConfig, image_size: int,
               card: dict[str, Any] | None = None, fp16_weights: bool = False,
               color_constancy: str = "none") -> None:
    """Write a self-contained model file atomically. `fp16_weights` stores them in fp16 (read as fp32).
    `color_constancy` names the step every input goes through before normalisation (intensity.py)."""
    preprocessing = Preprocessing(image_size=image_size, color_constancy=color_constancy)
    ModelFile.from_model(model, cfg, preprocessing, card).write(path, fp16_weights=fp16_weights)


def load_model(weights: str | Path | None = None, device="cpu") -> LoadedModel:
    """The bundled `default` model, or the model file (or bundled name) `weights`, in eval mode."""
    from .models.bundled import resolve_weights

    file = ModelFile.read(resolve_weights(weights))
    return LoadedModel(file.build(device), file)


def _read_v1(payload: dict[str, Any], path: Path) -> ModelFile:
    preprocess = {k: v for k, v in payload.get("preprocess", {}).items() if k != "color_constancy"}
    return _read(payload, preprocess, path)


def _read_v2(payload: dict[str, Any], path: Path) -> ModelFile:
    return _read(payload, payload.get("preprocess", {}), path)


def _read_v3(payload: dict[str, Any], path: Path) -> ModelFile:
    file = _read(payload, payload.get("preprocess", {}), path)
    if "labels" in payload:
        file.labels = Labels.from_dict(payload["labels"])
    return file


def _architecture_on_disk(architecture: ModelConfig) -> dict[str, Any]:
    """The `model` section in the vocabulary every version reads: the built network, so a stage trained
    only (`train_only`) is never in a file, and `full_resolution_decoder` says whether the stage is there."""
    values = dataclasses.asdict(architecture)
    for key in ("kernels", "strides"):  # 3-D only: a 2-D model's file stays as every version wrote it
        if values[key] is None:
            del values[key]
    stage = values.pop("full_resolution_stage")
    if stage == "train_only":
        raise ValueError("a model file holds the shipped network: drop the full-resolution stage first")
    return {**values, "full_resolution_decoder": stage == "kept"}


def _read(payload: dict[str, Any], preprocess: dict[str, Any], path: Path) -> ModelFile:
    values = dict(payload["model"])
    values["full_resolution_stage"] = "kept" if values.pop("full_resolution_decoder", True) else "none"
    try:
        architecture = ModelConfig(**values)
    except TypeError as exc:
        raise UserError(f"{path}: model config not understood ({exc})") from None
    return ModelFile(architecture, Preprocessing.from_dict(preprocess), payload.get("card", {}),
                     payload["state_dict"], path)


def _read_v5(payload: dict[str, Any], path: Path) -> ModelFile:
    file = _read_v3(payload, path)
    file.members = int(payload.get("members", 1))
    return file


# version 4 differs from 3 only in what `preprocess` may hold, which Preprocessing.from_dict reads
# version 6 differs from 5 only in what `preprocess` may hold (`patching`: a 3-D network)
_READERS = {1: _read_v1, 2: _read_v2, 3: _read_v3, 4: _read_v3, 5: _read_v5, 6: _read_v5}
