#!/usr/bin/env bash
# Trains the bundled default model with configs/default.yaml (background-safe: rerun the same command to
# resume after a kill). Selection uses a seeded 10% split carved from ISIC 2017 train; the official val set
# is only evaluated, at the end, with `lesionseg evaluate`'s defaults.
#   nohup scripts/train_default.sh > runs/lite0_160.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1
DATA=${DATA:-../shared/data/isic2017}
RUN=${RUN:-runs/lite0_160}
.venv/bin/lesionseg train --data "$DATA/train" --config configs/default.yaml --out "$RUN" "$@"
.venv/bin/lesionseg evaluate --data "$DATA/val" --weights "$RUN/model.pt" --out "$RUN/eval_val"
