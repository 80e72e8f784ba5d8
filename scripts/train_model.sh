#!/usr/bin/env bash
# Trains a model from its config, configs/NAME.yaml, into runs/NAME, then scores it on the official val set
# with `lesionseg evaluate`. Selection uses the seeded 10% split carved from train; val is only evaluated.
# A dataset without train/ and val/ (JSRT) is one folder whose config names its fixed validation list.
# Resumable: rerun the same command after a kill. Extra arguments are config overrides (KEY=VALUE).
#   nohup scripts/train_model.sh lite0_160_ema_cpu > runs/lite0_160_ema_cpu.log 2>&1 &
#   LESIONSEG="python3 -m lesionseg.cli" DATA=.gpu/data scripts/train_model.sh lite0_256_gpu   (no .venv)
# EXTRA_DATA (space-separated folders, e.g. `lesionseg pseudo-label` output) adds training pairs; the carved
# validation split still comes from $DATA/train alone. EVALUATE_FLAGS (e.g. "--clicks 5") go to evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: scripts/train_model.sh NAME [KEY=VALUE ...]  (NAME: a config in configs/)}
shift
export NO_ALBUMENTATIONS_UPDATE=1
DATA=${DATA:-../shared/data/isic2017}
RUN=${RUN:-runs/$NAME}
LESIONSEG=${LESIONSEG:-.venv/bin/lesionseg}
EXTRA=()
for folder in ${EXTRA_DATA:-}; do EXTRA+=(--data "$folder"); done
if [ -d "$DATA/train" ]; then
  $LESIONSEG train --data "$DATA/train" "${EXTRA[@]}" --config "configs/$NAME.yaml" --out "$RUN" "$@"
  $LESIONSEG evaluate --data "$DATA/val" --weights "$RUN/model.pt" --out "$RUN/eval_val" ${EVALUATE_FLAGS:-}
else  # one folder with a fixed validation list (data.val_ids in the config, e.g. JSRT's val_ids.txt)
  $LESIONSEG train --data "$DATA" "${EXTRA[@]}" --config "configs/$NAME.yaml" --out "$RUN" "$@"
  $LESIONSEG evaluate --data "$DATA" --ids val_ids.txt --weights "$RUN/model.pt" --out "$RUN/eval_val" ${EVALUATE_FLAGS:-}
fi
