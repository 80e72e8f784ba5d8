"""The `lesionseg` command. Thin: parse, call, turn UserErrors into one line and an exit code.

Exit codes: 0 all done; 1 some inputs failed (the rest were written); 2 usage error / nothing done.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import typer  # noqa: E402

from . import __version__  # noqa: E402
from .errors import UserError, ValidationError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Skin-lesion segmentation with U-Net: train, evaluate, predict, export.")
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
        except ValidationError as exc:
            if _state["debug"]:
                raise
            for line in exc.problems:
                _err(line)
            _err(f"error: {exc}")
            raise typer.Exit(exc.exit_code)
        except UserError as exc:
            if _state["debug"]:
                raise
            _err(f"error: {exc}")
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130)

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
    data: Path = typer.Option(..., "--data", help="Folder with images/ and masks/."),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides KEY=VALUE, e.g. trainer.max_epochs=5"),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="Validation folder (else a seeded split of --data)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (see configs/)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory; rerun the same command to resume."),
    mask_threshold: Optional[int] = typer.Option(None, "--mask-threshold", help="Binarise masks with >2 levels at this value."),
    devices: str = typer.Option("1", "--devices", help="Number of devices (processes) or 'auto'."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy, e.g. ddp."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Machines for multi-node training."),
):
    """Train a model; writes config.yaml, checkpoints/, metrics.csv and model.pt (the best model)."""
    from .config import load_config, parse_overrides

    extra = parse_overrides(overrides or [])
    if mask_threshold is not None:
        extra.setdefault("data", {})["mask_threshold"] = mask_threshold
    cfg = load_config(config, extra)
    if out is None:
        out = Path("runs") / (config.stem if config else "default")
    from .training.fit import train as run_training

    try:
        model_path = run_training(data, out, cfg, val_data=val_data, devices=int(devices) if devices.isdigit() else devices,
                                  strategy=strategy, num_nodes=num_nodes)
    except FloatingPointError as exc:
        raise UserError(f"{out}: {exc}; stopped; the last good checkpoint is kept in {out}/checkpoints") from None
    print(f"best model: {model_path}")


@app.command()
@handle_errors
def evaluate(
    data: Path = typer.Option(..., "--data", help="Folder with images/ and masks/."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Model file (default: the bundled model)."),
    out: Path = typer.Option(Path("out/evaluate"), "--out", help="Where metrics.json and per_image.csv go."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability threshold for the lesion."),
    mask_threshold: Optional[int] = typer.Option(None, "--mask-threshold", help="Binarise masks with >2 levels at this value."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
):
    """Evaluate a model on a labelled folder; metrics at each image's original size."""
    from .evaluation import evaluate as run_evaluate, load_labelled, write_results
    from .inference import Segmenter

    labelled = load_labelled(data, mask_threshold)
    segmenter = Segmenter.load(weights, threshold=threshold, batch_size=batch_size)
    result = run_evaluate(segmenter, labelled)
    write_results(result, out, extra={"weights": str(segmenter.loaded.path), "data": str(data), "threshold": threshold})
    _print_metrics(result.metrics)
    print(f"wrote {out / 'metrics.json'} and {out / 'per_image.csv'}")


def _print_metrics(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics['n_images']} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if key != "n_images":
            table.add_row(key, f"{value:.4f}")
    Console().print(table)


@app.command()
@handle_errors
def predict(
    inputs: List[Path] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(..., "--out", help="Output folder for <id>_mask.png and <id>_overlay.png."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Model file (default: the bundled model)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability threshold for the lesion."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results already in --out."),
    strict: bool = typer.Option(False, "--strict", help="Stop before writing anything if any input is unreadable."),
    report: bool = typer.Option(False, "--report", help="Also write report.html."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
):
    """Segment images; masks are 0/255 PNGs at each input's original size."""
    from .predict import run_predict

    failures = run_predict(inputs, out, weights=weights, threshold=threshold, overwrite=overwrite, strict=strict,
                           report=report, batch_size=batch_size, on_failure=lambda line: _err(line))
    if failures:
        raise typer.Exit(1)


@app.command()
@handle_errors
def info(weights: Optional[Path] = typer.Argument(None, help="Model file (default: the bundled model).")):
    """Show a model file's card: architecture, parameters, training data, recipe, figures."""
    from .models import count_parameters, load_model

    loaded = load_model(weights)
    card = dict(loaded.card)
    summary = {
        "file": str(loaded.path),
        "architecture": {**loaded.config.__dict__, "parameters": count_parameters(loaded.model)},
        "input_size": loaded.image_size,
        **card,
    }
    print(json.dumps(summary, indent=2, default=str))


@app.command()
@handle_errors
def export(weights: Optional[Path] = typer.Option(None, "--weights"), out: Path = typer.Option(Path("model.onnx"), "--out")):
    """Export to ONNX (not available yet in this version)."""
    raise UserError("export to ONNX is not available yet in this version")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
