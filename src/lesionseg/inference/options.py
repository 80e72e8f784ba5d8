"""Inference options, declared once: what `predict`, `evaluate`, `pseudo-label`, the Python API and the
service let a caller choose about how a model is applied. The CLI flags and the service's query parameters
are built from the fields' metadata, every caller validates through `InferenceOptions.check`, and a model
file's stored defaults (`ModelFile.inference_defaults`) fill what the caller leaves unset (None)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import UserError

# The TTA scales used when TTA is asked for and neither the caller nor the model names any.
FALLBACK_TTA_SCALES = (0.75, 1.0, 1.25)
FALLBACK_THRESHOLD = 0.5  # when neither the caller nor the model names one


class OptionError(UserError):
    """Refused option values: `problems` holds (field name, what is wrong) pairs, so each caller can name a
    field its own way (`--min-area`, `min_area`, query parameter 'min_area')."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{name} {problem}" for name, problem in problems))
        self.problems = problems

    def named(self, name) -> str:
        """The message with each field's name passed through `name`."""
        return "; ".join(f"{name(option)} {problem}" for option, problem in self.problems)


def _option(default: Any, help: str, query: bool = True) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "query": query})


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    threshold: float | None = _option(
        None, "Probability threshold for the foreground. Default: the model's own (0.5 unless its card names "
        "one chosen out of fold).")
    tta: bool | None = _option(
        None, "Test-time augmentation: scales x {none, h-flip, v-flip}, averaged. Default: the model's own "
        "setting (`lesionseg info` shows it; off unless its card turns it on).")
    tta_scales: tuple[float, ...] | None = _option(
        None, "Comma-separated scales for TTA (default: the model's, else 0.75,1.0,1.25).", query=False)
    largest_component: bool | None = _option(
        None, "Keep only the largest connected region (per structure). Default: the model's own (off unless "
        "its card turns it on).")
    fill_holes: bool = _option(False, "Fill holes inside lesions.")
    min_area: int = _option(0, "Remove objects smaller than this many pixels.")
    crf: bool = _option(False, "Refine probabilities with a dense CRF (pydensecrf2) before thresholding.",
                        query=False)
    batch_size: int = _option(8, "Images per forward pass.", query=False)

    def __post_init__(self) -> None:
        if self.tta_scales is not None:
            object.__setattr__(self, "tta_scales", tuple(float(s) for s in self.tta_scales))
        self.check()

    def check(self) -> None:
        """Raise OptionError naming the first refused field."""
        problems = self.problems()
        if problems:
            raise OptionError(problems[:1])

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong) for every refused field."""
        values = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return [(name, problem) for name, value in values if (problem := _problem(name, value))]

    def resolved(self, model_defaults: dict[str, Any]) -> "InferenceOptions":
        """These options with what is left unset filled in from a model's stored defaults: TTA is on by
        default when the model names its scales; the threshold and the largest component are the model's
        (chosen out of fold by `train --folds`), else 0.5 and off."""
        scales = model_defaults.get("tta_scales")
        tta = bool(scales) if self.tta is None else self.tta
        threshold = float(model_defaults.get("threshold", FALLBACK_THRESHOLD)) if self.threshold is None \
            else self.threshold
        largest = bool(model_defaults.get("largest_component", False)) if self.largest_component is None \
            else self.largest_component
        filled = dataclasses.replace(self, tta=tta, threshold=threshold, largest_component=largest)
        if self.tta_scales is not None:
            return filled
        return dataclasses.replace(filled, tta_scales=tuple(scales) if scales else FALLBACK_TTA_SCALES)

    def filled_from(self, base: "InferenceOptions") -> "InferenceOptions":
        """These options, with each field left unset (None) taken from `base`."""
        names = [f.name for f in dataclasses.fields(self)]
        unset = {name: getattr(base, name) for name in names if getattr(self, name) is None}
        return dataclasses.replace(self, **unset)

    def postprocess(self):
        """The post-processing steps these options ask for (`postprocess.PostprocessConfig`)."""
        from ..postprocess import PostprocessConfig

        threshold = FALLBACK_THRESHOLD if self.threshold is None else self.threshold
        return PostprocessConfig(threshold, largest_component=bool(self.largest_component),
                                 fill_holes=self.fill_holes, min_area=self.min_area, crf=self.crf)

    @classmethod
    def names(cls, query_only: bool = False) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.metadata["query"] or not query_only]

    @classmethod
    def field(cls, name: str) -> dataclasses.Field:
        return next(f for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def from_text(cls, values: dict[str, str], base: "InferenceOptions | None" = None) -> "InferenceOptions":
        """Options from text values (query parameters) by field name, over `base`. Every field that cannot
        be read or is refused is named: the OptionError lists them all."""
        parsed: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for name, raw in values.items():
            try:
                parsed[name] = _from_text(cls._type(name), raw)
            except ValueError as exc:
                problems.append((name, str(exc)))
                continue
            if problem := _problem(name, parsed[name]):
                problems.append((name, problem))
        if problems:
            raise OptionError(problems)
        return dataclasses.replace(base or cls(), **parsed)

    @classmethod
    def _type(cls, name: str) -> type:
        return {"tta": bool, "largest_component": bool, "threshold": float}.get(
            name, type(cls.field(name).default))


def _problem(name: str, value: Any) -> str | None:
    """What is wrong with one field's value, or None."""
    if name == "threshold" and value is not None and not 0.0 < value < 1.0:
        return f"must be between 0 and 1, got {value}"
    if name == "tta_scales" and value is not None and (not value or any(not 0.1 <= s <= 4 for s in value)):
        return f"must be between 0.1 and 4, got {list(value)}"
    if name == "min_area" and value < 0:
        return f"must be ≥ 0, got {value}"
    if name == "batch_size" and value < 1:
        return f"must be ≥ 1, got {value}"
    return None


def _from_text(kind: type, raw: str) -> Any:
    if kind is bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on", ""):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"not a number ({raw!r})") from None
