"""What `lesionseg train` does with what it is given, as a Python call: the rules that pick a run's
recipe (a config, a plan made for this data, machine and minutes, or a plan by default), split the budget
between folds, refuse what cross-validation and data-parallel training cannot do together, record the
command that resumes the run, and leave no folder behind when the data or the setup is refused."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError


@dataclass
class TrainRequest:
    """A training run as the command line asks for it (the flags by name, overrides as KEY=VALUE)."""

    data: list[Path]
    overrides: list[str] = field(default_factory=list)
    val_data: Path | None = None
    config: Path | None = None
    out: Path | None = None
    mask_threshold: int | None = None
    devices: str = "1"
    strategy: str = "auto"
    num_nodes: int = 1
    auto: bool = False
    minutes: float = 60.0
    folds: int | None = None
    splits: Path | None = None
    fold: int | None = None

    @property
    def crossval(self) -> bool:
        return self.folds is not None or self.splits is not None

    def check(self) -> None:
        """What is refused before any data is read or any plan made."""
        from ..api import check_training_request
        from ..config import parse_overrides

        if self.fold is not None and not self.crossval:
            raise UserError("--fold I needs --folds K or --splits FILE")
        if self.crossval and (len(self.data) > 1 or self.val_data is not None or self.devices != "1"
                              or self.num_nodes != 1):
            # a DDP launcher re-runs this command in every process: the fold loop would run in each
            raise UserError("--folds splits one --data folder and trains each fold on one device: drop "
                            "--val-data, other --data folders, --devices / --num-nodes (parallel folds: "
                            "--fold I, one process per device)")
        check_training_request(parse_overrides(self.overrides), self.strategy)
        if self.auto and self.config is not None:
            raise UserError("--auto plans the config itself: drop --config (or train from a plan with "
                            "--config PLAN.yaml)")

    def command(self) -> str:
        """The command that reruns (resumes) this run, recorded on the model card: the options given."""
        options = [*[("--data", d) for d in self.data], ("--val-data", self.val_data),
                   ("--config", self.config), ("--out", self.out), ("--mask-threshold", self.mask_threshold),
                   ("--devices", None if self.devices == "1" else self.devices),
                   ("--strategy", None if self.strategy == "auto" else self.strategy),
                   ("--num-nodes", None if self.num_nodes == 1 else self.num_nodes), ("--folds", self.folds),
                   ("--splits", self.splits), ("--fold", self.fold)]
        given = [str(v) for option in options if option[1] is not None for v in option]
        return shlex.join(["lesionseg", "train", *given, *self.overrides])


def launch(request: TrainRequest) -> tuple[Path | None, str]:
    """Train as asked: (the model file, what it is), or (None, ...) when this process trained one fold of
    several and the others are not scored yet. Without --config, the run is planned (as --auto)."""
    from ..api import train as run_training
    from ..config import parse_overrides

    request.check()
    unconfigured = request.config is None and not request.auto
    request.auto = request.auto or unconfigured
    if request.out is None:
        request.out = Path("runs") / (request.config.stem if request.config else "auto")
    extra = parse_overrides(request.overrides)
    with removed_when_refused(request.out):
        if request.auto:
            share = request.minutes / (fold_count(request.folds, request.splits) if request.crossval else 1)
            devices = int(request.devices) if str(request.devices).isdigit() else 1
            request.config = planned_config(request.data[0], request.out, share, devices)
            if unconfigured:
                print("train: no --config, so the run is planned for this data, machine and --minutes (as "
                      "--auto); the seed's recipe is --config configs/seed_unet.yaml", file=sys.stderr)
            initial = extra.get("trainer", {}).get("init_from")
            if initial:  # fine-tuning: the model's own architecture and input; the plan's schedule
                from .module import initial_model_settings

                taken = initial_model_settings(str(initial))
                extra = {**extra, **{k: {**taken[k], **extra.get(k, {})} for k in taken}}
        command = request.command()
        if request.crossval:
            from ..crossval import train_folds

            if request.mask_threshold is not None:
                extra["data.mask_threshold"] = request.mask_threshold
            path = train_folds(request.data[0], request.out, request.config, request.folds, request.splits,
                               command=command, overrides=extra, only=request.fold)
            return path, "model (fold ensemble)"
        data = request.data[0] if len(request.data) == 1 else request.data
        path = run_training(data, request.out, request.config, request.val_data,
                            mask_threshold=request.mask_threshold, devices=request.devices,
                            strategy=request.strategy, num_nodes=request.num_nodes, command=command, **extra)
        return path, "best model"


@contextlib.contextmanager
def removed_when_refused(out: Path):
    """A run folder this call created holds nothing but its plan when the data or the setup is refused:
    removed then, so a refusal leaves nothing behind (a run that trained keeps its checkpoints)."""
    created = not out.exists()
    try:
        yield
    except UserError:
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= {"plan"}:
            shutil.rmtree(out, ignore_errors=True)
        raise


def fold_count(folds: int | None, splits: Path | None) -> int:
    """How many folds the budget is shared by, before the data are read."""
    if splits is None:
        return max(1, folds or 5)
    try:
        return max(1, len(json.loads(splits.read_text())))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{splits}: not a readable splits file ({exc})") from None


def planned_config(data: Path, out: Path, minutes: float, devices: int = 1) -> Path:
    """OUT/plan/plan.yaml: made once, then reused, so that rerunning the command resumes the same run."""
    from ..planning import make_plan

    plan = out / "plan" / "plan.yaml"
    if not plan.is_file():
        _fp, made = make_plan(data, out / "plan", minutes, devices)
        print(f"plan: input {made.config.data.image_size}², batch {made.config.data.batch_size}, "
              f"{minutes:g} min ({plan})", file=sys.stderr)
    return plan
