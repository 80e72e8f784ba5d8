"""The `lesionseg` command. Thin: parse, call, turn UserErrors into one line and an exit code.

Exit codes: 0 all done; 1 some inputs failed (the rest were written); 2 usage error / nothing done.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import typer  # noqa: E402

from . import __version__  # noqa: E402
from .cli_flags import BACKEND, PIXEL_SPACING, WEIGHTS, flag_name, inference_flags  # noqa: E402
from .errors import UserError, ValidationError  # noqa: E402
from .inference.options import InferenceOptions, OptionError  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="2-D medical image segmentation with U-Net (skin lesions, polyps, your data): train, evaluate, "
    "predict, serve.",
)
_state = {"debug": False}


def _err(line: str) -> None:
    print(f"lesionseg: {line}", file=sys.stderr)


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except OptionError as exc:
            if _state["debug"]:
                raise
            _err(f"error: {exc.named(flag_name)}")
            raise typer.Exit(exc.exit_code) from None
        except ValidationError as exc:
            if _state["debug"]:
                raise
            for line in exc.lines():
                _err(line)
            _err(f"error: {exc}")
            raise typer.Exit(exc.exit_code) from None
        except UserError as exc:
            if _state["debug"]:
                raise
            _err(f"error: {exc}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool):
    if value:
        print(f"lesionseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    _state["debug"] = debug


@app.command(context_settings={"allow_extra_args": False})
@handle_errors
def train(
    data: List[Path] = typer.Option(
        ...,
        "--data",
        help="Folder with images/ and masks/; repeat to add more "
        "training folders (e.g. pseudo-labels): validation is carved from the first only.",
    ),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Config overrides KEY=VALUE, e.g. trainer.max_epochs=5"
    ),
    val_data: Optional[Path] = typer.Option(None, "--val-data",
                                            help="Validation folder (else a seeded split of --data)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (see configs/)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Run directory; rerun the same command to resume."
    ),
    mask_threshold: Optional[int] = typer.Option(None, "--mask-threshold",
                                                 help="Binarise masks with >2 levels at this value."),
    devices: str = typer.Option("1", "--devices", help="Number of devices (processes) or 'auto'."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy, e.g. ddp."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Machines for multi-node training."),
    auto: bool = typer.Option(False, "--auto", help="Plan the run for this data, machine and --minutes "
                              "(`lesionseg plan`; written to OUT/plan/, reused on resume), not --config."),
    minutes: float = typer.Option(60.0, "--minutes", help="With --auto: the training budget (all folds "
                                  "together with --folds)."),
    folds: Optional[int] = typer.Option(None, "--folds", help="K-fold cross-validation (5 is nnU-Net's): "
                                        "train K folds, choose TTA, threshold and largest component out of "
                                        "fold, and write the fold ensemble as OUT/model.pt."),
    splits: Optional[Path] = typer.Option(None, "--splits", help="The folds as a splits.json (nnU-Net's "
                                          "format: [{\"train\": [ids], \"val\": [ids]}, ...]); implies "
                                          "--folds."),
    fold: Optional[int] = typer.Option(None, "--fold", help="With --folds/--splits: train and score this "
                                       "fold only (0-based; one process per device on the same --out); the "
                                       "call that finds every fold scored writes the ensemble."),
):
    """Train a model; writes config.yaml, checkpoints/, metrics.csv and model.pt (the best model)."""
    from .training.launch import TrainRequest, launch

    path, what = launch(TrainRequest(data, overrides or [], val_data, config, out, mask_threshold, devices,
                                     strategy, num_nodes, auto, minutes, folds, splits, fold))
    if path is not None:
        print(f"{what}: {path}")


@app.command()
@handle_errors
def plan(
    data: Path = typer.Option(..., "--data", help="A training folder (images/ + masks/, or imagesTr/ + "
                              "labelsTr/ volumes)."),
    out: Path = typer.Option(..., "--out", help="Where fingerprint.json and plan.yaml go."),
    minutes: float = typer.Option(60.0, "--minutes", help="The training budget the plan is sized to."),
    devices: int = typer.Option(1, "--devices", help="Devices the run will train on (data-parallel): the "
                                "probed speed of one, times this."),
):
    """Fingerprint a dataset and write a training plan for this machine and budget (`train --config
    DIR/plan.yaml`); the rules are in docs/planning.md."""
    from .planning import make_plan

    fp, made = make_plan(data, out, minutes, devices)
    size = made.config.data.image_size
    print(f"{fp['n_cases']} {fp['kind']}, {fp['label_mode']} ({', '.join(fp['structures'])}); plan: "
          f"input {size}², batch {made.config.data.batch_size}, {minutes:g} min; wrote "
          f"{out / 'fingerprint.json'} and {out / 'plan.yaml'}")


@app.command()
@handle_errors
@inference_flags()
def evaluate(
    data: Path = typer.Option(..., "--data", help="Folder with images/ and masks/."),
    weights: Optional[Path] = WEIGHTS,
    out: Path = typer.Option(Path("out/evaluate"), "--out", help="Where metrics.json and per_case.csv go."),
    mask_threshold: Optional[int] = typer.Option(None, "--mask-threshold",
                                                 help="Binarise masks with >2 levels at this value."),
    backend: str = BACKEND,
    report: bool = typer.Option(False, "--report", help="Also write report.html (histogram, worst/best "
                                "cases)."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="Score only the ids listed in this file (one per "
                                       "line; a path, or a name inside --data): a fixed validation list."),
    pixel_spacing: Optional[float] = PIXEL_SPACING,
    nsd_tolerance: float = typer.Option(2.0, "--nsd-tolerance", min=0.0,
                                        help="Several structures: the normalised surface Dice's tolerance, "
                                        "in mm when the spacing is known, else pixels."),
    clicks: int = typer.Option(0, "--clicks", min=0, help="Also simulate a user's clicks, up to N per case "
                               "and structure, each at the deepest error: Dice after each click, NoC@85 / "
                               "NoC@90 (a model trained with model.prompt=clicks)."),
    options: InferenceOptions = None,
):
    """Evaluate a model on a labelled folder; metrics at each image's original size."""
    from .api import evaluate as run_evaluate
    from .report import print_metrics

    metrics = run_evaluate(data, weights, out=out, mask_threshold=mask_threshold, report=report,
                           backend=backend, ids=ids, pixel_spacing=pixel_spacing, nsd_tolerance=nsd_tolerance,
                           clicks=clicks, **dataclasses.asdict(options))
    print_metrics(metrics)
    print(f"wrote {out / 'metrics.json'} and {out / 'per_case.csv'}")
    if report:
        print(f"wrote {out / 'report.html'}")


@app.command()
@handle_errors
@inference_flags()
def predict(
    inputs: List[Path] = typer.Argument(..., help="Image files or folders; volumes: .nii / .nii.gz files or "
                                        "DICOM series folders."),
    out: Path = typer.Option(..., "--out", help="Output folder for <id>_mask.png and <id>_overlay.png "
                             "(volumes: <id>_labels.nii.gz, <id>_seg.dcm, <id>_views.png, volumes.json)."),
    weights: Optional[Path] = WEIGHTS,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in --out."),
    strict: bool = typer.Option(False, "--strict",
                                help="Stop before writing anything if any input is unreadable."),
    report: bool = typer.Option(False, "--report", help="Also write report.html."),
    backend: str = BACKEND,
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="Threads reading and writing while the model runs "
                                          "(photos; default 2)."),
    shard: Optional[str] = typer.Option(None, "--shard",
                                        help="K/N: only this machine's part of the inputs (stable by id)."),
    skip_existing: bool = typer.Option(False, "--skip-existing",
                                       help="Resume: skip inputs whose mask is already in --out."),
    manifest: Optional[Path] = typer.Option(None, "--manifest",
                                            help="Write a CSV: id, mask, status, foreground fraction."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="One line per image written."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Also write <id>_overlay.png "
                                  "(default on)."),
    pixel_spacing: Optional[float] = PIXEL_SPACING,
    options: InferenceOptions = None,
):
    """Segment images; masks are 0/255 PNGs at each input's original size. A progress bar on a terminal."""
    from .inference import Segmenter
    from .predict import run_predict

    def make():  # predict loads the model only after its cheap checks
        return Segmenter.load(weights, backend=backend, options=options)

    failures = run_predict(inputs, out, make, overwrite=overwrite, strict=strict, report=report,
                           on_failure=_err, shard=shard, skip_existing=skip_existing, manifest=manifest,
                           workers=workers, verbose=verbose, overlays=overlays, pixel_spacing=pixel_spacing)
    if failures:
        raise typer.Exit(1)


@app.command("rank")
@handle_errors
def rank(
    data: Path = typer.Option(..., "--data",
                              help="Unlabelled images: a folder of images, or one with images/."),
    out: Path = typer.Option(..., "--out", help="The ranking, a CSV: rank, id, source, uncertainty, "
                             "foreground fraction."),
    weights: Optional[Path] = WEIGHTS,
    backend: str = BACKEND,
):
    """Rank unlabelled images for annotation, the one the model is least sure of first."""
    from .inference import Segmenter
    from .io import write_csv
    from .pseudo_label import RANK_FIELDS, rank_for_annotation

    rows = rank_for_annotation(Segmenter.load(weights, backend), data)
    write_csv(out, RANK_FIELDS, rows)
    first = f"; first {rows[0]['id']} (uncertainty {rows[0]['uncertainty']:.4f})" if rows else ""
    print(f"wrote {out} ({len(rows)} images, the least confident first{first})")


@app.command("pseudo-label")
@handle_errors
@inference_flags(exclude=("crf",), tta={"default": True, "help": "Teacher with test-time augmentation "
                                                                 "(default on)."})
def pseudo_label(
    data: Path = typer.Option(..., "--data",
                              help="Unlabelled images: a folder of images, or one with images/."),
    out: Path = typer.Option(..., "--out", help="Output folder: images/, masks/ and pseudo_labels.csv."),
    weights: Optional[Path] = WEIGHTS,
    min_confidence: float = typer.Option(0.85, "--min-confidence",
                                         help="Keep images whose |p>0.7| / |p>0.3| is at least this."),
    backend: str = BACKEND,
    options: InferenceOptions = None,
):
    """Label unlabelled images with a teacher model and keep its confident masks, for `train --data A --data
    OUT`."""
    from .inference import Segmenter
    from .pseudo_label import pseudo_label as run

    teacher = Segmenter.load(weights, backend=backend, options=options)
    failures: list[str] = []

    def failed(line: str) -> None:
        failures.append(line)
        _err(line)

    summary = run(teacher, data, out, min_confidence, on_failure=failed)
    print(f"wrote {summary.out}: kept {summary.kept} of {summary.total} images "
          f"(confidence ≥ {min_confidence}); list in {summary.out / 'pseudo_labels.csv'}")
    if failures:
        raise typer.Exit(1)


@app.command("merge-manifests")
@handle_errors
def merge_manifests(manifests: List[Path] = typer.Argument(..., help="The shards' manifest CSVs."),
                    out: Path = typer.Option(..., "--out", help="The merged manifest CSV.")):
    """Merge the manifests of `predict --shard K/N` runs into one (an id in two shards is an error)."""
    from .predict import merge_manifests as merge

    counts = merge(manifests, out)
    print(f"wrote {out}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))


@app.command()
@handle_errors
def info(
    weights: Optional[Path] = typer.Argument(None, help="Model file or bundled name (default, cpu, polyp, "
                                             "chest, hippocampus)."),
):
    """Show a model file's card: architecture, parameters, training data, recipe, figures."""
    from .models import count_parameters, load_model
    from .models.bundled import BUNDLED, bundled_model_path

    loaded = load_model(weights)
    card = dict(loaded.card)
    summary = {
        "file": str(loaded.path),
        "architecture": {**loaded.config.__dict__, "parameters": count_parameters(loaded.model)},
        "input_size": loaded.image_size,
        "color_constancy": loaded.color_constancy,
        "network": loaded.file.preprocessing.describe(),
        **({"labels": loaded.labels.to_dict()} if loaded.labels.multi else {}),
        **({"ensemble_members": loaded.file.members} if loaded.file.members > 1 else {}),
        **card,
        "bundled_models": {name: str(bundled_model_path(name)) for name in BUNDLED
                           if bundled_model_path(name).is_file()},
    }
    print(json.dumps(summary, indent=2, default=str))


@app.command()
@handle_errors
def export(
    weights: Optional[Path] = typer.Option(None, "--weights",
                                           help="Model file or bundled name (default, cpu, polyp, chest, "
                                                "hippocampus)."),
    out: Path = typer.Option(Path("model.onnx"), "--out", help="The .onnx file to write."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (≥ 17)."),
    check: bool = typer.Option(False, "--check",
                               help="Compare ONNX Runtime with torch (max prob diff ≤ 1e-4)."),
    check_images: Optional[Path] = typer.Option(None, "--check-images",
                                                help="Folder of real images for --check."),
    int8: bool = typer.Option(False, "--int8",
                              help="Statically quantized (QDQ int8) for CPUs; needs --calibration."),
    calibration: Optional[Path] = typer.Option(None, "--calibration",
                                               help="Folder of training images to calibrate --int8 on."),
    calibration_images: int = typer.Option(64, "--calibration-images", min=1, help="How many of them."),
):
    """Export to ONNX: dynamic batch, height and width, one self-contained file (fp32, or --int8)."""
    from .export import export_int8, export_onnx
    from .inference.backends import compare_backends

    if int8:
        if calibration is None:
            raise UserError("--int8 needs --calibration DIR (training images; 64 are used by default)")
        settings = export_int8(weights, out, calibration, calibration_images, opset=opset)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, int8 QDQ, calibrated on "
              f"{settings['calibration_images']} images of {calibration})")
        return
    path = export_onnx(weights, out, opset=opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {opset}, dynamic batch/height/width)")
    if check or check_images:
        from .io import list_images, read_image

        images = [read_image(p) for p in list_images([check_images])[:8]] if check_images else None
        result = compare_backends(path, weights, images)
        ok = result["max_prob_diff"] <= 1e-4
        print(f"check: max |p_onnx - p_torch| = {result['max_prob_diff']:.2e} over inputs {result['inputs']} "
              f"-> {'ok' if ok else 'FAILED'}")
        if not ok:
            raise UserError(
                f"{path}: ONNX Runtime differs from torch by {result['max_prob_diff']:.2e} (> 1e-4)"
            )


@app.command()
@handle_errors
def serve(
    weights: Optional[Path] = WEIGHTS,
    backend: str = BACKEND,
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 = every interface)."
    ),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    token: Optional[str] = typer.Option(
        None,
        "--token",
        envvar="LESIONSEG_TOKEN",
        help="Require 'Authorization: Bearer TOKEN' on /v1/* (or set LESIONSEG_TOKEN).",
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Server processes (each loads the model)."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Images per forward pass at most."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0,
                                      help="How long a batch waits for more requests."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Images waiting for the model before 503."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds a request may take before 504."),
    max_body_mb: float = typer.Option(50.0, "--max-body-mb", help="Largest request body (413 above)."),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", min=1,
                                   help="Largest image in pixels (413 above; a volume: 4x this in voxels)."),
    max_unpacked_mb: float = typer.Option(
        1024.0, "--max-unpacked-mb", help="Largest volume upload once unzipped or gunzipped (413 above)."),
    cors_origin: Optional[List[str]] = typer.Option(
        None, "--cors-origin", help="Allow browser calls from this origin (repeatable); none by default."),
    annotations: Optional[Path] = typer.Option(
        None, "--annotations", help="Interactive sessions save corrected cases here (images/ + masks/, the "
        "layout train reads); saving is refused without it."),
    unlabelled: Optional[Path] = typer.Option(None, "--unlabelled", help="Images the annotation page offers "
                                              "next, the one the model is least sure of first."),
    max_sessions: int = typer.Option(8, "--max-sessions", min=1, help="Interactive sessions open at once."),
):
    """Serve the model over HTTP: POST /v1/segment, a page at /, API reference at /docs."""
    import dataclasses

    import uvicorn

    from .serve.app import CONFIG_ENV, ServeConfig

    cfg = ServeConfig(weights=str(weights) if weights else None, backend=backend, token=token or None,
                      max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, timeout_s=timeout,
                      max_body_mb=max_body_mb, max_pixels=max_pixels,
                      max_unpacked_mb=max_unpacked_mb, cors_origins=list(cors_origin or []),
                      annotations=str(annotations) if annotations else None, max_sessions=max_sessions,
                      unlabelled=str(unlabelled) if unlabelled else None,
                      threads=max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None)
    cfg.check(workers)
    from .inference.backends import open_backend

    # a wrong --weights fails here, in one line, before the server starts
    open_backend(cfg.weights, cfg.backend)
    os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(cfg))
    print(f"lesionseg serve: http://{host}:{port}/  (API reference /docs; {workers} worker(s); "
          f"token {'required' if cfg.token else 'off'})", file=sys.stderr, flush=True)
    uvicorn.run("lesionseg.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning", timeout_graceful_shutdown=5)


@app.command()
@handle_errors
def plot(
    run_dir: Path = typer.Argument(..., help="A training run directory (holds metrics.csv)."),
    out: Optional[Path] = typer.Option(None, "--out",
                                       help="PNG to write (default RUN_DIR/training_curves.png)."),
):
    """Plot a run's training curves (loss, validation mean Jaccard / Dice, learning rate)."""
    from .run_dir import RunDir
    from .viz import training_curves

    rows = RunDir(run_dir).metrics()
    target = out or run_dir / "training_curves.png"
    training_curves(rows, target)
    print(f"wrote {target}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
