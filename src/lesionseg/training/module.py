"""LightningModule: the model, Dice+BCE, AdamW + cosine (per epoch or over a time budget), an optional
weight EMA, per-image validation Jaccard/Dice."""

from __future__ import annotations

import dataclasses
import time

import lightning as L
import torch
from torchmetrics import MeanMetric

from ..config import Config
from ..labels import IGNORED, Labels
from ..losses import DeepSupervisionLoss, loss_for
from ..metrics import batch_jaccard_dice
from ..models import build_model
from ..models.parts import channels_last, is_click_weight
from .schedule import TimeCosine
from .simulated_clicks import SimulatedClicks

VALIDATION_CLICKS = 3  # a promptable model is validated without clicks and after this many


def _yaml_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def fit_to_initial_model(cfg: Config) -> Config:
    """`trainer.init_from` (fine-tuning): the run trains the architecture of the model it starts from. A
    recipe whose full-resolution stage is `train_only`, started from a model shipped without that stage,
    trains without it (there are no weights to start it from). Any other difference is refused, naming each
    key and the value to use."""
    from ..errors import UserError
    from ..model_file import ModelFile
    from ..models.bundled import resolve_weights

    name = cfg.trainer.init_from
    theirs = dataclasses.asdict(ModelFile.read(resolve_weights(name)).architecture)
    model = cfg.model
    if model.full_resolution_stage == "train_only" and theirs["full_resolution_stage"] == "none":
        model = dataclasses.replace(model, full_resolution_stage="none")
    if model.prompt == "clicks" and theirs.get("prompt", "none") == "none":  # a plain model learns clicks
        theirs.update(prompt=model.prompt, prompt_channels=model.prompt_channels)
    ours = dataclasses.asdict(model)
    # deep-supervision heads may be absent in the source (they are dropped at inference); click channels
    # follow the data's structures
    free = ("deep_supervision", "prompt_channels")
    differ = [k for k in ours if k not in free and theirs.get(k) != ours[k]]
    if differ:
        wanted = " ".join(f"model.{k}={_yaml_value(theirs[k])}" for k in differ)
        here = ", ".join(f"model.{k} is {_yaml_value(ours[k])} here" for k in differ)
        raise UserError(f"trainer.init_from {name}: that model has another architecture ({here}); "
                        f"to fine-tune it, set {wanted}")
    return dataclasses.replace(cfg, model=model)


def initial_model_settings(name: str) -> dict:
    """The config keys a planned run (`train --auto trainer.init_from=MODEL`) takes from the model it
    fine-tunes: its architecture, input size and how it covers volumes, so the plan keeps only its schedule,
    batch and augmentation."""
    from ..model_file import ModelFile
    from ..models.bundled import resolve_weights

    file = ModelFile.read(resolve_weights(name))
    model = {k: v for k, v in dataclasses.asdict(file.architecture).items()
             if k not in ("prompt_channels", "deep_supervision")}
    pre, data = file.preprocessing, {"image_size": file.preprocessing.image_size}
    if pre.slicing is not None:
        data.update(slice_axis=pre.slicing.axis, slice_context=pre.slicing.context)
        spacing = pre.slicing.spacing_mm
        if spacing and spacing[0] == spacing[1]:
            data["slice_spacing_mm"] = spacing[0]
    if pre.patching is not None:
        data.update(patch_size=list(pre.patching.patch), target_spacing_mm=list(pre.patching.spacing_mm))
    return {"model": model, "data": data}


def load_initial_weights(model: torch.nn.Module, cfg: Config) -> None:
    """`trainer.init_from`: copy a model file's (or bundled model's) weights into `model`, whose architecture
    `fit_to_initial_model` made the source's."""
    from ..errors import UserError
    from ..models import load_model
    from ..models.parts import with_prompted_input_weights

    source = load_model(cfg.trainer.init_from)
    state = with_prompted_input_weights(dict(source.model.state_dict()), model.state_dict())
    # Deep-supervision heads may be absent in the source (they are dropped at inference): strict otherwise.
    missing, unexpected = model.load_state_dict(state, strict=False)
    misfits = [k for k in missing + unexpected if not k.startswith("aux_heads.")]
    if misfits:
        raise UserError(f"trainer.init_from {cfg.trainer.init_from}: weights do not fit ({misfits[0]})")


def warmed_ema(decay: float):
    """An AveragedModel update whose decay is min(decay, (1 + n) / (10 + n)) after n updates."""

    @torch.no_grad()
    def update(ema_params, current_params, num_averaged):
        d = min(decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged)))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, current_params, 1.0 - d)
        else:  # integer buffers (BatchNorm's batch count), as torch's own EMA update treats them
            for e, c in zip(ema_params, current_params):
                e.copy_(e * d + c * (1.0 - d))

    return update


def with_labels(cfg: Config, labels: Labels, preprocessing=None) -> Config:
    """The config whose network has one output channel per structure (+ background for exclusive ones), for
    volumes one input channel per slice of context (3 for a lone slice, repeated for RGB encoders), and
    with model.prompt clicks two click channels per structure."""
    from ..errors import UserError

    patching = getattr(preprocessing, "patching", None)
    if patching is not None:
        cfg = dataclasses.replace(cfg, model=_network_for(cfg.model, patching))
    slicing = getattr(preprocessing, "slicing", None)
    if slicing is not None and slicing.channels != cfg.model.in_channels:
        if cfg.model.encoder != "plain":
            raise UserError(f"config key 'data.slice_context': {slicing.context} slices as channels, but "
                            f"model.encoder {cfg.model.encoder} is pretrained on 3 (RGB): use 1 or 3")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_channels=slicing.channels))
    if labels.multi and cfg.loss.lovasz_weight:
        raise UserError("config key 'loss.lovasz_weight': the Lovász hinge is for one structure; set it to 0")
    if cfg.model.out_channels not in (1, labels.out_channels):
        raise UserError(f"config key 'model.out_channels': {cfg.model.out_channels}, but the data has "
                        f"{labels.out_channels} output channels ({labels.mode}: {', '.join(labels.names)})")
    prompts = 2 * len(labels.structures) if cfg.model.prompt == "clicks" else 0
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, out_channels=labels.out_channels,
                                                              prompt_channels=prompts))


def _network_for(model, patching):
    """A 3-D network's input channels and, unless configured, its kernels and strides for the patch and
    spacing (nnU-Net's rule)."""
    from ..models.unet3d import pooling_plan

    model = dataclasses.replace(model, in_channels=patching.channels)
    if model.strides is None and model.kernels is None:
        kernels, strides = pooling_plan(patching.spacing_mm, patching.patch)
        model = dataclasses.replace(model, depth=len(strides) - 1, kernels=[list(k) for k in kernels],
                                    strides=[list(s) for s in strides])
    return model


def predicted_channels(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Bool (N, C, H, W) per structure: sigmoid channels > 0.5, or the softmax's argmax one-hot."""
    if mode != "exclusive":
        return logits > 0
    winner = logits.argmax(1, keepdim=True)
    classes = torch.arange(1, logits.shape[1], device=logits.device)
    return winner == classes.view(1, -1, *[1] * (logits.ndim - 2))


def image_jaccard_dice(logits: torch.Tensor, y: torch.Tensor, mode: str):
    """Per-image Jaccard and Dice, averaged over structures, ignored pixels left out."""
    pred = predicted_channels(logits, mode)
    if mode == "binary":
        return batch_jaccard_dice(pred, y > 0.5)
    valid = y != IGNORED
    n, c = y.shape[:2]
    jac, dice = batch_jaccard_dice((pred & valid).reshape(n * c, 1, -1),
                                   ((y == 1) & valid).reshape(n * c, 1, -1))
    return jac.view(n, c).mean(1), dice.view(n, c).mean(1)


class SegmentationModule(L.LightningModule):
    def __init__(self, cfg: Config, labels: Labels | None = None):
        super().__init__()
        self.labels = labels or Labels.binary()
        self.cfg = cfg = with_labels(cfg, self.labels)
        self.model = build_model(cfg.model, pretrained=cfg.trainer.init_from is None)
        if cfg.trainer.init_from is not None:
            load_initial_weights(self.model, cfg)
        self.loss = DeepSupervisionLoss(loss_for(self.labels.mode, cfg.loss.dice_weight, cfg.loss.bce_weight,
                                                 cfg.loss.lovasz_weight, cfg.loss.batch_dice))
        self.memory_format = (channels_last(cfg.model.dimensions) if cfg.trainer.channels_last
                              else torch.contiguous_format)
        self.model.to(memory_format=self.memory_format)
        # The compiled wrapper is kept outside the module tree, so checkpoints and model.pt hold the plain
        # model's keys whether or not it was compiled.
        compiled = torch.compile(self.model, mode=cfg.trainer.compile_mode) if cfg.trainer.compile else None
        object.__setattr__(self, "_compiled", compiled)
        # The EMA copy lives in the module tree, so checkpoints carry it and a resumed run continues it.
        self.ema = None
        if cfg.optim.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            update = (warmed_ema(cfg.optim.ema_decay) if cfg.optim.ema_warmup
                      else get_ema_multi_avg_fn(cfg.optim.ema_decay))
            self.ema = AveragedModel(self.model, multi_avg_fn=update, use_buffers=True)
            self.ema.requires_grad_(False)  # not trained: DDP must not wait for its gradients
            self.val_jaccard_raw = MeanMetric()
            if cfg.optim.ema_selection:  # a buffer, so that a checkpoint remembers which weights won
                self.register_buffer("raw_selected", torch.tensor(False))
        # MeanMetric reduces across processes, so DDP ranks report one figure.
        self.val_loss, self.val_jaccard, self.val_dice = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_loss = MeanMetric()
        self._epoch_images, self._epoch_start = 0, 0.0
        self.simulated_clicks = None
        if cfg.model.prompt_channels:
            self.simulated_clicks = SimulatedClicks(len(self.labels.structures), self.labels.mode,
                                                    predicted_channels, cfg.trainer.seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model if self._compiled is None else self._compiled
        return model(x.contiguous(memory_format=self.memory_format))

    def selected_model(self) -> torch.nn.Module:
        """The weights that are validated, selected and saved: the EMA when it is on (with
        optim.ema_selection: the better-scoring of the EMA and the raw weights at the last validation)."""
        raw = self.ema is None or bool(getattr(self, "raw_selected", False))
        return self.model if raw else self.ema.module

    @property
    def selected_weights(self) -> str:
        return "raw" if self.selected_model() is self.model else "ema"

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def on_train_start(self) -> None:
        # A resumed run may have a new max_epochs: the cosine schedule then continues smoothly from the
        # current lr and reaches eta_min at the new last epoch (its recursive form follows T_max).
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
                sched.T_max = self.cfg.trainer.max_epochs

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "reseed"):
            datamodule.reseed(self.current_epoch)
        self._epoch_images, self._epoch_start = 0, time.perf_counter()

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.simulated_clicks is not None:
            x = self.simulated_clicks(self.model, x, y)
        loss = self.loss(self(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {self.current_epoch}, "
                                     f"batch {batch_idx}")
        self.train_loss.update(loss.detach())
        self._epoch_images += x.shape[0]
        return loss

    def on_train_epoch_end(self) -> None:
        seconds = max(time.perf_counter() - self._epoch_start, 1e-9)
        self.log("train_loss", self.train_loss.compute(), sync_dist=True)
        self.log("train_img_per_s", self._epoch_images / seconds * self.trainer.world_size)
        # Summed over processes: equals the training set size when DDP shards are disjoint and complete.
        self.log("train_images", float(self._epoch_images), reduce_fx="sum", sync_dist=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.train_loss.reset()

    def on_validation_epoch_start(self) -> None:
        if self.simulated_clicks is not None:  # every validation clicks alike, so epochs compare
            self.validation_clicks = SimulatedClicks(len(self.labels.structures), self.labels.mode,
                                                     predicted_channels, self.cfg.trainer.seed)

    def _validated(self, network: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        """(logits without clicks, per-image Jaccard, Dice). A promptable network scores the mean of its
        figures without clicks and after VALIDATION_CLICKS simulated ones, so that selection rewards a
        model that both segments alone and follows clicks."""
        logits = network(x.contiguous(memory_format=self.memory_format))
        jac, dice = image_jaccard_dice(logits, y, self.labels.mode)
        if self.simulated_clicks is not None:
            prompted = self.validation_clicks(network, x, y, VALIDATION_CLICKS)
            clicked = image_jaccard_dice(network(prompted.contiguous(memory_format=self.memory_format)), y,
                                         self.labels.mode)
            jac, dice = (jac + clicked[0]) / 2, (dice + clicked[1]) / 2
        return logits, jac, dice

    def validation_step(self, batch, batch_idx):
        x, y = batch
        if self.ema is not None:
            self.val_jaccard_raw.update(self._validated(self, x, y)[1].float())
        logits, jac, dice = self._validated(self if self.ema is None else self.ema.module, x, y)
        self.val_loss.update(self.loss(logits, y).detach(), weight=x.shape[0])
        self.val_jaccard.update(jac.float())
        self.val_dice.update(dice.float())

    def on_validation_epoch_end(self) -> None:
        score, dice = self.val_jaccard.compute(), self.val_dice.compute()
        raw = self.val_jaccard_raw.compute() if self.ema is not None else None
        volumes = self._validation_volumes()
        if volumes is not None:  # whole volumes, as evaluate scores them, in place of the slices' figures
            validated = self.model if self.ema is None else self.ema.module
            scored = self._score_volumes(validated, volumes)
            score, dice = torch.tensor(scored["jaccard"]), torch.tensor(scored["dice"])
            self.blank_validation = (scored["blank"], scored["with_structures"], scored["never_segmented"])
            if self.ema is not None:
                raw = torch.tensor(self._score_volumes(self.model, volumes)["jaccard"])
        self.log("val_loss", self.val_loss.compute())
        self.log("val_dice", dice)
        for m in (self.val_loss, self.val_jaccard, self.val_dice):
            m.reset()
        if self.ema is not None:
            self.log("val_mean_jaccard_raw", raw)
            self.val_jaccard_raw.reset()
            if hasattr(self, "raw_selected"):
                self.raw_selected.fill_(bool(raw > score))
                score = torch.maximum(score, raw)
        self.log("val_mean_jaccard", score)

    def _validation_volumes(self) -> list | None:
        """The validation volumes, whole, when the data are volumes (the data module keeps them)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "validation_volumes", None) or None

    def _score_volumes(self, network, volumes: list) -> dict[str, float]:
        from .validation import score_volumes

        datamodule = self.trainer.datamodule
        return score_volumes(network, self.labels, datamodule.preprocessing, volumes, self.device,
                             self.memory_format)

    def elapsed_s(self) -> float:
        """Training seconds of this run so far, resumed sessions included (Lightning's Timer)."""
        from lightning.pytorch.callbacks import Timer

        timers = (
            [c for c in self.trainer.callbacks if isinstance(c, Timer)] if self._trainer is not None else []
        )
        return timers[0].time_elapsed() if timers else 0.0

    def configure_optimizers(self):
        o = self.cfg.optim
        named = list(self.model.named_parameters())
        groups = [{"params": [p for n, p in named if not is_click_weight(n)], "lr": o.lr},
                  {"params": [p for n, p in named if is_click_weight(n)], "lr": o.lr * o.click_lr_scale}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr, weight_decay=o.weight_decay)
        if o.schedule == "cosine_time":
            sched = TimeCosine(opt, self.elapsed_s, self.cfg.trainer.max_minutes * 60, o.warmup_steps,
                               o.eta_min)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.cfg.trainer.max_epochs,
                                                           eta_min=o.eta_min)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
