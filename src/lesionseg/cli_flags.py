"""The command line's shared flags: the model and backend, the pixel spacing, and one flag per
`InferenceOptions` field, built from the field (its default and help), so that the CLI, the Python API and
the service's query parameters say the same things."""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import typer

from .errors import UserError
from .inference.options import InferenceOptions

WEIGHTS = typer.Option(None, "--weights", help="Model file: .pt (torch) or .onnx (ONNX Runtime), or a "
                       "bundled model: default, cpu, polyp, chest, hippocampus. Default: default.")
BACKEND = typer.Option("auto", "--backend", help="auto (by file type) | torch | onnx.")
PIXEL_SPACING = typer.Option(None, "--pixel-spacing", min=0.0,
                             help="Pixel size in mm at the images' original size, for distances and areas "
                             "(default: the model's training data's, if known).")


# The command-line type of each InferenceOptions field (`--tta-scales` is comma-separated text).
FLAG_TYPES = {"threshold": Optional[float], "tta": Optional[bool], "tta_scales": Optional[str],
              "largest_component": Optional[bool], "fill_holes": bool, "min_area": int, "crf": bool,
              "batch_size": int}


def _flag(name: str, **overrides):
    """The option of an `InferenceOptions` field: flag, default and help come from the field."""
    field = InferenceOptions.field(name)
    flag = "--" + name.replace("_", "-")
    decls = f"{flag}/--no-{flag[2:]}" if name in ("tta", "largest_component") else flag
    return typer.Option(overrides.pop("default", field.default), decls,
                        help=overrides.pop("help", field.metadata["help"]), **overrides)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def inference_flags(exclude: tuple[str, ...] = (), **overrides):
    """Gives a command a flag for every `InferenceOptions` field (but `exclude`), built from the field, and
    calls it with one `options: InferenceOptions` in their place. `overrides`: a field's own default/help."""
    names = [n for n in InferenceOptions.names() if n not in exclude]

    def wrap(fn):
        signature = inspect.signature(fn, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != "options"]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=FLAG_TYPES[n],
                                   default=_flag(n, **overrides.get(n, {}))) for n in names]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            given = {n: kwargs.pop(n) for n in names}
            return fn(*args, options=_inference_options(given), **kwargs)

        command.__signature__ = signature.replace(parameters=kept + added)
        command.__annotations__ = {**{p.name: p.annotation for p in kept}, **FLAG_TYPES}
        return command

    return wrap


def _inference_options(given: dict) -> InferenceOptions:
    """InferenceOptions from a command's flags (`--tta-scales` as text)."""
    values = dict(given)
    text = values.get("tta_scales")
    if text is not None:
        try:
            values["tta_scales"] = [float(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--tta-scales: expected numbers like 0.75,1.0,1.25, got {text!r}") from None
    return InferenceOptions(**values)
