"""The Python API for the whole job: train, evaluate (and `Segmenter` for prediction).

The CLI calls these same functions, so a Python caller gets the same validation and the same `UserError`
messages (one line naming the file or key and the problem) as `lesionseg train` / `lesionseg evaluate`.
Heavy imports (torch, Lightning) happen inside the calls: `import lesionseg` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .errors import UserError


def _nested_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"trainer.max_epochs": 2, "model": {"base_width": 8}} → one nested dict for config.load_config."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{key}': '{part}' is given both as a value and as a section")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = dict(value) if isinstance(value, dict) else value
    return nested


def check_training_request(overrides: dict[str, Any], strategy: str = "auto") -> None:
    """What can be checked before a plan or a run is made: raises UserError naming the first unknown or
    mistyped config key, or an unknown --strategy."""
    from .config import load_config
    from .training.fit import check_strategy

    load_config(None, _nested_overrides(overrides))
    check_strategy(strategy)


def train(data: str | Path | Sequence[str | Path], out: str | Path, /, config: str | Path | None = None,
          val_data: str | Path | None = None, *, mask_threshold: int | None = None, devices: int | str = 1,
          strategy: str = "auto", num_nodes: int = 1, progress: bool | None = None,
          command: str | None = None, **overrides: Any) -> Path:
    """Train (or resume: call again with the same arguments) into the run folder `out`; returns its model.pt.

    `config`: a YAML recipe (see configs/); `overrides`: config keys, as sections or dotted names, e.g.
    `trainer={"max_epochs": 5}`, `data={"batch_size": 4}` or `**{"optim.lr": 1e-3}` (`data` and `out` are
    positional, so `data=` names the config section). Without `val_data`, a seeded split of `data`
    is carved off for validation and model selection. `data` may be a list of folders: the split is carved
    from the first, the others add training pairs only (e.g. `lesionseg pseudo-label` output). `command` is
    recorded on the model card (default: this call, spelled out).
    """
    from .config import load_config
    from .training.fit import train as fit

    extra = _nested_overrides(overrides)
    if mask_threshold is not None:
        extra.setdefault("data", {})["mask_threshold"] = mask_threshold
    cfg = load_config(config, extra)
    if command is None:
        shown = [str(d) for d in data] if isinstance(data, (list, tuple)) else str(data)
        args = [repr(shown), repr(str(out))] + [
            f"{k}={v!r}" for k, v in (("config", config), ("val_data", val_data)) if v is not None
        ]
        command = f"lesionseg.train({', '.join(args + [f'**{extra!r}'] if extra else args)})"
    return fit(data, out, cfg, val_data=val_data, devices=devices, strategy=strategy, num_nodes=num_nodes,
               progress=progress, command=command)


def segmenter(weights: str | Path | None = None, *, backend: str = "auto", **options: Any):
    """A `Segmenter` with `predict`'s options (`InferenceOptions`' fields: threshold, tta, tta_scales,
    largest_component, fill_holes, min_area, crf, batch_size; the CLI's flags by the same names). `tta` /
    `tta_scales` unset: what the model file asks for (TTA is off unless its card's `inference` entry turns
    it on)."""
    from .inference import InferenceOptions, Segmenter

    known = InferenceOptions.names()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} (known: backend, {', '.join(known)})")
    return Segmenter.load(weights, backend=backend, **options)


def evaluate(data: str | Path, weights: str | Path | None = None, *, out: str | Path | None = None,
             mask_threshold: int | None = None, report: bool = False, ids: str | Path | None = None,
             pixel_spacing: float | None = None, nsd_tolerance: float = 2.0, clicks: int = 0,
             **options: Any) -> dict[str, float]:
    """Score a model (a model file, an .onnx, or a bundled name; default: the bundled `default`) on a labelled
    folder at each image's original size; returns the metrics (mean_jaccard, mean_dice, thresholded_jaccard,
    pooled_iou, miou_fg_bg, pixel_accuracy, sensitivity, specificity, n_images).

    `options` are `segmenter()`'s (threshold, tta, largest_component, ...). With `out`, writes metrics.json
    and per_case.csv there (and report.html with `report=True`). `ids`: a file listing the ids to score.
    Models of several structures: per structure Dice, Jaccard, HD95, ASSD, NSD (at `nsd_tolerance`), distances
    in mm with `pixel_spacing` (default: the model's training data's, when its card says), else pixels.
    `clicks` N > 0 (a model trained with model.prompt clicks): also the interactive protocol's Dice
    after each of up to N simulated clicks and NoC@85 / NoC@90, under the metrics' "clicks".
    """
    from .evaluation import (
        Spacing,
        evaluate_clicks,
        evaluate_volumes,
        load_labelled,
        write_report,
        write_results,
        write_volume_report,
    )
    from .evaluation import evaluate as score
    from .inference import InferenceOptions
    from .manifest import will_write_to
    from .pairs import is_volume_dataset

    unknown = sorted(set(options) - {"backend", *InferenceOptions.names()})
    if unknown:
        raise UserError(f"evaluate: unknown option(s) {', '.join(unknown)} "
                        f"(known: backend, {', '.join(InferenceOptions.names())})")
    if report and out is None:
        raise UserError("evaluate: report=True needs an out folder to write report.html into")
    if out is not None:  # before minutes of scoring
        will_write_to(Path(out))
    volumes = is_volume_dataset(data)
    if volumes:
        flags = (("--mask-threshold", mask_threshold), ("--pixel-spacing", pixel_spacing))
        given = [flag for flag, value in flags if value is not None]
        if given:
            raise UserError(f"{data}: {', '.join(given)} for photos' masks; label volumes are read by value "
                            "and measured at their own voxel spacing")
    else:  # every data problem is reported before a model is loaded
        labelled = load_labelled(data, mask_threshold, ids)
    seg = segmenter(weights, **options)
    if clicks:
        seg.click_channels()  # refuses a model that takes none
    if seg.backend.preprocessing.covers_volumes != volumes:
        raise UserError(f"{data}: a dataset of volumes, and {seg.weights_path.name} is a model for photos"
                        if volumes else f"{data}: a folder of photos, and {seg.weights_path.name} is a model "
                        "for volumes (give an imagesTr/ + labelsTr/ dataset)")
    if volumes:
        labelled = load_labelled(data, ids=ids, model_labels=seg.labels)
        result = evaluate_volumes(seg, labelled, nsd_tolerance)
    else:
        result = score(seg, labelled, spacing=Spacing.choose(pixel_spacing, seg.card),
                       nsd_tolerance=nsd_tolerance)
    if clicks:
        result.metrics["clicks"] = evaluate_clicks(seg, labelled, clicks)
    if out is not None:
        settings = {"weights": str(seg.weights_path), "backend": seg.backend.name, "data": str(data),
                    **({"ids": str(ids) if ids else "all"} if volumes else {}),
                    "tta": (("flips" if volumes else list(seg.tta_scales)) if seg.tta else False),
                    "postprocess": seg.post.describe()}
        write_results(result, out, extra=settings)
        if report:
            (write_volume_report(result, seg, labelled, Path(out), settings) if volumes
             else write_report(result, seg, labelled, out, settings))
    return dict(result.metrics)
