"""Training entry point: run directory, callbacks, resume, the self-contained best model."""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint, TQDMProgressBar

from .. import __version__
from ..config import Config, diff_configs
from ..errors import UserError
from ..labels import Labels
from ..machine import native_bf16
from ..model_file import ModelFile, Preprocessing
from ..models import count_parameters, drop_full_resolution_stage
from ..planning import plan_evidence
from ..run_dir import METRICS_FIELDS, RunDir
from .module import SegmentationModule, fit_to_initial_model, with_labels

METRIC = "val_mean_jaccard"
# Changing these between a run and its resumption is allowed; anything else is a different experiment.
# (max_epochs: the cosine schedule is re-aimed at the new last epoch, see SegmentationModule.on_train_start.)
RESUMABLE_CHANGES = {"trainer.max_epochs", "trainer.max_minutes", "trainer.patience", "data.num_workers",
                     "data.on_device", "data.device_memory_fraction", "trainer.selection"}


def resolve_precision(choice: str, accelerator: str) -> str:
    """bf16 only where the hardware computes it natively; emulated bf16 is ~10x slower on older CPUs."""
    if choice == "fp32":
        return "32-true"
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = native_bf16()
    if choice == "bf16" or native:
        return "bf16-mixed"
    return "32-true"


class RunRecorder(Checkpoint):
    """After each epoch: one row in metrics.csv, one line on the terminal, and model.pt when best.

    Subclasses Checkpoint so Lightning calls it after the module's epoch-end logging.
    """

    def __init__(self, run_dir: Path, cfg: Config, data_desc: dict, command: str | None = None,
                 labels: Labels | None = None, preprocessing: Preprocessing | None = None):
        self.run_dir, self.cfg, self.data_desc, self.command = run_dir, cfg, data_desc, command
        self.labels = labels or Labels.binary()
        self.preprocessing = preprocessing or Preprocessing(cfg.data.image_size,
                                                            color_constancy=cfg.data.color_constancy)
        self.run = RunDir(run_dir)
        self.best = -math.inf
        self.best_epoch = -1
        self.elapsed_before = 0.0  # minutes of earlier (interrupted) sessions of this run
        self.hardware = ""
        self._start = time.perf_counter()

    def elapsed_min(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._start) / 60

    def on_train_start(self, trainer, pl_module):
        # After a checkpoint is restored: a resumed run keeps only rows of epochs its checkpoint finished.
        if trainer.global_rank != 0:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "feeding"):
            self.data_desc["feeding"] = datamodule.feeding
        self.hardware = (
            f"{trainer.world_size} × {device_name(trainer.strategy.root_device)}, {trainer.precision}"
        )
        rows = [r for r in self.run.metrics_text_rows() if int(r["epoch"]) < trainer.current_epoch]
        self.run.write_metrics(rows)
        # The CSV is the run's memory across sessions: best score so far and minutes already spent.
        for r in rows:
            if r.get(METRIC) and float(r[METRIC]) > self.best:
                self.best, self.best_epoch = float(r[METRIC]), int(r["epoch"])
        self.elapsed_before = float(rows[-1]["elapsed_min"]) if rows else 0.0
        self._start = time.perf_counter()


    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": trainer.current_epoch, **{k: f"{m[k]:.6g}" for k in METRICS_FIELDS[1:-1] if k in m},
               "elapsed_min": f"{self.elapsed_min():.3f}"}
        self.run.append_metrics(row)
        score = m.get(METRIC, -math.inf)
        improved = score > self.best
        if improved:
            self.best, self.best_epoch = score, trainer.current_epoch
        if improved or self.cfg.trainer.selection == "last":
            self.save_best(pl_module.selected_model(), trainer.current_epoch, score,
                           pl_module.selected_weights)
        print(
            f"epoch {trainer.current_epoch + 1}/{self.cfg.trainer.max_epochs}  "
            f"train_loss {m.get('train_loss', float('nan')):.4f}  val_loss "
            f"{m.get('val_loss', float('nan')):.4f}  "
            f"val_mean_jaccard {score:.4f}{' *' if improved else ''}  "
            + (f"(raw weights {m['val_mean_jaccard_raw']:.4f})  " if "val_mean_jaccard_raw" in m else "")
            + f"{m.get('train_img_per_s', 0):.1f} img/s  {self.elapsed_min():.1f} min",
            file=sys.stderr,
            flush=True,
        )

    def save_best(self, model, epoch: int, score: float | None = None, weights: str = "ema"):
        """model.pt from `model` at `epoch`: the best so far, or (trainer.selection: last) the latest.
        `weights`: which they are (ema: the average, raw: the trained weights themselves)."""
        last = self.cfg.trainer.selection == "last"
        card = {"lesionseg_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "training_data": self.data_desc, "recipe": self.cfg.to_dict(), "command": self.command,
                "parameters": count_parameters(model), "best_epoch": epoch + 1,
                "selection_metric": "none: the last epoch (trainer.selection: last)" if last else METRIC,
                "selection_value": round(self.best if score is None or not last else score, 5),
                "selected_weights": weights,
                "training_minutes": round(self.elapsed_min(), 2), "hardware": self.hardware,
                **plan_evidence(self.run_dir / "plan")}
        model_cfg = self.cfg.model
        if model_cfg.full_resolution_stage == "train_only":
            model, model_cfg = drop_full_resolution_stage(model, model_cfg)
            card["parameters"] = count_parameters(model)
            card["derivation"] = ("full-resolution decoder stage dropped after training "
                                  "(model.full_resolution_stage: train_only); the 1/2-resolution head is the "
                                  "output; selection_value and metrics.csv score the model with the stage")
        # channels_last weights are saved contiguous; the file does not depend on memory format.
        file = ModelFile.from_model(model, model_cfg, self.preprocessing, card, self.labels)
        file.write(self.run.model_path)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def prepare_run_dir(run_dir: Path, cfg: Config, write: bool = True) -> Path | None:
    """Create or reopen a run directory (`write=False`: only the checks). Returns the checkpoint to resume
    from, if any."""
    run = RunDir(run_dir)
    last = run.last_checkpoint
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a folder")
    if run.is_run():
        old = run.config()
        # before the data are read, the network's channels (and a 3-D network's planned layout) are not
        # known yet
        derived = {"model.out_channels", "model.in_channels"}
        if cfg.model.dimensions == 3 and cfg.model.strides is None and cfg.model.kernels is None:
            derived |= {"model.depth", "model.kernels", "model.strides"}
        changed = [k for k in diff_configs(old, cfg) if k not in RESUMABLE_CHANGES
                   and (write or k not in derived)]
        if changed:
            raise UserError(f"{run_dir}: holds a run with a different config ({', '.join(changed)}); "
                            "use another --out or the same settings to resume")
    elif run_dir.exists() and any(p.name != "plan" for p in run_dir.iterdir()):  # plan/: train --auto
        raise UserError(f"{run_dir}: folder is not empty and holds no lesionseg run (config.yaml missing)")
    if write and launcher_rank() == 0:  # DDP children re-run this command: only the first process writes
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.rglob(".*.part"):  # temp files of writes cut short by a kill; targets are intact
            stale.unlink()
        run.write_config(cfg)
    return last if last.exists() else None


def launcher_rank() -> int:
    """Global rank as set by Lightning's DDP launcher for the processes it starts (0 for the launching
    one)."""
    import os

    return int(os.environ.get("NODE_RANK", "0")) * 1000 + int(os.environ.get("LOCAL_RANK", "0"))


def check_strategy(strategy: str) -> None:
    from lightning.pytorch.strategies import StrategyRegistry

    known = {"auto", *StrategyRegistry.available_strategies()}
    if strategy not in known:
        raise UserError(
            f"training setup: --strategy {strategy!r} is not one of {', '.join(sorted(known)[:8])}, ..."
        )


def train(data: str | Path | Sequence[str | Path], out: str | Path, cfg: Config,
          val_data: str | Path | None = None, devices: int | str = 1, strategy: str = "auto",
          num_nodes: int = 1, progress: bool | None = None, command: str | None = None) -> Path:
    """Train (or resume) into `out`; returns the path of the best model file. Problems the user can fix
    (data, config, devices, a diverging loss) raise UserError with one line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    check_strategy(strategy)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if cfg.trainer.init_from is not None:
        cfg = fit_to_initial_model(cfg)
    try:
        return _train(data, out, cfg, val_data, devices, strategy, num_nodes, progress, command)
    except FloatingPointError as exc:
        raise UserError(
            f"{out}: {exc}; stopped; the last good checkpoint is kept in {out}/checkpoints"
        ) from None
    except MisconfigurationException as exc:  # e.g. --devices / --strategy the machine cannot honour
        raise UserError(f"training setup: {str(exc).splitlines()[0]}") from None


def describe_data(datamodule, cfg: Config, val_data) -> dict:
    """The training data as the model card records them."""
    folders = [str(f) for f in datamodule.folders]
    desc = {
        "train": folders[0] if len(folders) == 1 else folders,
        "val": str(val_data) if val_data else (
            f"the ids listed in {cfg.data.val_ids}" if cfg.data.val_ids
            else f"{cfg.data.val_fraction:.0%} of train (seed {cfg.data.split_seed})"),
        "n_train": len(datamodule.train_set),
        "n_val": len(datamodule.val_set),
    }
    if datamodule.volumes:
        desc.update(n_train_volumes=datamodule.n_volumes[0], n_val_volumes=datamodule.n_volumes[1],
                    samples=("patches (n_train: drawn per epoch; n_val: one per validation volume)"
                             if datamodule.patches else "slices (n_train, n_val count slices)"))
    return desc


def _train(data, out, cfg: Config, val_data, devices, strategy: str, num_nodes: int, progress: bool | None,
           command: str | None) -> Path:
    from ..data.datamodule import SegmentationDataModule

    run_dir = Path(out)
    prepare_run_dir(run_dir, cfg, write=False)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    # the data are checked before the run directory is written: a refused folder leaves nothing behind
    datamodule = SegmentationDataModule(data, val_data, cfg.data, cfg.augment, seed=cfg.trainer.seed,
                                        dimensions=cfg.model.dimensions)
    cfg = with_labels(cfg, datamodule.labels, datamodule.preprocessing)
    resume = prepare_run_dir(run_dir, cfg)
    data_desc = describe_data(datamodule, cfg, val_data)
    module = SegmentationModule(cfg, datamodule.labels)
    recorder = RunRecorder(run_dir, module.cfg, data_desc, command, datamodule.labels,
                           datamodule.preprocessing)
    best_ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=METRIC, mode="max",
                                save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks = [
        best_ckpt,
        EarlyStopping(monitor=METRIC, mode="max", patience=cfg.trainer.patience),
        recorder,
    ]
    if progress is None:
        progress = sys.stderr.isatty()
    if progress:
        callbacks.append(TQDMProgressBar())
    t = cfg.trainer
    if t.sync_batchnorm and not (t.accelerator in ("auto", "gpu") and torch.cuda.is_available()):
        raise UserError("trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm does not run on CPU)")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
        precision=resolve_precision(t.precision, t.accelerator), max_epochs=t.max_epochs,
        max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        limit_train_batches=t.limit_train_batches, callbacks=callbacks, logger=False,
        enable_progress_bar=progress, enable_model_summary=False, deterministic=t.deterministic,
        num_sanity_val_steps=0, default_root_dir=run_dir, sync_batchnorm=t.sync_batchnorm,
        benchmark=None if t.deterministic else True,  # cudnn autotuning: slow first epoch, faster after
    )
    if trainer.global_rank == 0:
        print(
            f"training {cfg.model.arch} (base {cfg.model.base_width}, {count_parameters(module.model):,} "
            "params) "
            f"on {data_desc['n_train']} images, validating on {data_desc['n_val']}; precision "
            f"{trainer.precision}; "
            f"{trainer.world_size} process(es); run dir {run_dir}"
            + (f"; resuming from {resume}" if resume else ""),
            file=sys.stderr,
            flush=True,
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*sync_dist=True.*")
        warnings.filterwarnings("ignore", ".*treespec.*")
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    # model.pt always ends equal to the chosen checkpoint (best, or last with trainer.selection: last), even
    # if an earlier session was killed between writes.
    last = cfg.trainer.selection == "last"
    chosen = Path((best_ckpt.last_model_path if last else best_ckpt.best_model_path) or "")
    if not chosen.is_file() and last:
        chosen = run_dir / "checkpoints" / "last.ckpt"
    if trainer.global_rank == 0 and chosen.is_file():
        state = torch.load(chosen, map_location="cpu", weights_only=False)
        if best_ckpt.best_model_score is not None:
            recorder.best = float(best_ckpt.best_model_score)
        module.load_state_dict(state["state_dict"])
        recorder.save_best(module.selected_model(), state["epoch"],
                           RunDir(run_dir).last_score() if last else None, module.selected_weights)
        _warn_if_blank(*getattr(module, "blank_validation", (0, 0, [])))
    return RunDir(run_dir).model_path


def _warn_if_blank(blank: int, holding: int, never: list[str]) -> None:
    """A model that segments nothing, or never one of its structures, is never reported as good."""
    if holding and blank == holding:
        print(f"warning: at its last validation the model segmented nothing in any of the {holding} "
              "validation volumes that hold a structure (Dice 0): train longer or plan again",
              file=sys.stderr, flush=True)
    elif never:
        print(f"warning: at its last validation the model segmented no {', '.join(never)} in any "
              "validation volume that holds it (Dice 0 for each): train longer or plan again",
              file=sys.stderr, flush=True)
