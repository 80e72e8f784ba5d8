"""nnU-Net v2's stock trainer on a wall-clock budget; run by the peer's own Python (`peer_nnunet.py` makes its
virtual environment), never imported by lesionseg.

`nnUNetTrainerMinutes` changes three things of `nnUNetTrainer`, and nothing of its network, loss, sampling,
augmentation or inference:
- it stops after the training iteration that crosses the budget (the clock starts once its data loaders run,
  as lesionseg's budget starts once its data is read);
- its poly schedule is spread over the budget: lr = 0.01 · (1 − elapsed / budget)^0.9, set before every
  iteration (the stock trainer steps it per epoch over 1,000 epochs);
- epochs of 25 iterations and 5 validation batches (stock: 250 and 50), so the clock is looked at often and
  the per-epoch bookkeeping (pseudo-Dice, checkpoint_best) keeps its share of the time.

Then `perform_actual_validation`: nnU-Net's own sliding window (step 0.5, Gaussian, mirroring) over the fold's
validation cases, written as NIfTI in its `validation/` folder, as after any nnU-Net training.

The trainer is built directly, never looked up by name: nnU-Net's lookup imports every trainer module, some
of which import timm, which imports torchvision, which PyPI ships as a CUDA build that fails beside the CPU
torch.

    PEER_MINUTES=30 python peer_nnunet_trainer.py PREPROCESSED_DATASET_FOLDER CONFIGURATION
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerMinutes(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ.get("PEER_MINUTES", "30")) * 60
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 5
        self.num_epochs = 10**6  # the clock ends the run
        self.iterations = 0
        self.train_seconds = 0.0

    def run_training(self):
        self.on_train_start()
        start = time.perf_counter()
        spent = 0.0
        while spent < self.budget_s:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = []
            for _ in range(self.num_iterations_per_epoch):
                for group in self.optimizer.param_groups:
                    group["lr"] = self.initial_lr * (1 - min(spent / self.budget_s, 1.0)) ** 0.9
                outputs.append(self.train_step(next(self.dataloader_train)))
                self.iterations += 1
                spent = time.perf_counter() - start
                if spent >= self.budget_s:
                    break
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val))
                       for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
            spent = time.perf_counter() - start
        self.train_seconds = spent
        self.on_train_end()


def main() -> None:
    preprocessed, configuration = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(int(os.environ.get("PEER_THREADS", os.cpu_count() or 1)))
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # what nnU-Net's own entry point adds (a fresh run)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer = nnUNetTrainerMinutes(plans, configuration, 0, dataset_json, torch.device("cpu"))
    trainer.run_training()
    started = time.perf_counter()
    trainer.perform_actual_validation(False)
    config = trainer.configuration_manager
    print(json.dumps({
        "iterations": trainer.iterations, "epochs": trainer.current_epoch,
        "train_seconds": round(trainer.train_seconds, 1),
        "predict_seconds": round(time.perf_counter() - started, 1),
        "patch_size": list(config.patch_size), "batch_size": config.batch_size,
        "spacing": list(config.spacing), "predictions": str(Path(trainer.output_folder) / "validation"),
    }))


if __name__ == "__main__":
    main()
