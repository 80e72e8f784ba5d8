#!/usr/bin/env bash
# Trains the bundled default model (background-safe: rerun the same command to resume after a kill).
# Selection uses a seeded 10% split carved from ISIC 2017 train; the official val set is only evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1
DATA=${DATA:-../shared/data/isic2017}
.venv/bin/lesionseg train --data "$DATA/train" --config configs/cpu_fast.yaml --out runs/bundled "$@"
.venv/bin/lesionseg evaluate --data "$DATA/val" --weights runs/bundled/model.pt --out runs/bundled/eval_val
