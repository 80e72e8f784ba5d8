#!/usr/bin/env bash
# One prepared script for a lent GPU (device tool): trains the EfficientNet-Lite0 U-Net and the seed's
# full-width plain U-Net (base 64) with scripts/gpu_train.py, then scores each with `lesionseg evaluate`
# on the official val set. Expects the data under .gpu/data/{train,val} and the efficientnet packages under
# .gpu/site (copied there, ignored by git); writes to ${RUNS:-runs/gpu}, and when the device tool's $OUT is
# set, packs each finished run (the base-64 weights excepted: too large to bring back) into $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src:.gpu/site PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
RUNS=${RUNS:-runs/gpu}
MIN=${MINUTES:-3.0}
mkdir -p "$RUNS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$RUNS/gpu.txt"
python3 -c "import torch, cv2, PIL, typer, rich, yaml, scipy, skimage; print('torch', torch.__version__)"
pack() {  # $1 run name
  if [ -n "${OUT:-}" ]; then tar czf "$OUT/$1.tgz" --exclude=plain_b64/model.pt -C "$RUNS" "$1" "$1.log"; fi
}
evaluate() {  # $1 run dir
  python3 -c "from lesionseg.cli import main; main()" evaluate --data .gpu/data/val --weights "$1/model.pt" \
    --out "$1/eval_val" 2>&1 | tail -14
}
python3 scripts/gpu_train.py --data .gpu/data/train --out "$RUNS/lite0_b16" --minutes "$MIN" --lr 5e-4 --report-data .gpu/data/val \
  model.encoder=efficientnet-lite0 model.depth=5 model.base_width=16 model.deep_supervision=true \
  2>&1 | tee "$RUNS/lite0_b16.log"
evaluate "$RUNS/lite0_b16" | tee -a "$RUNS/lite0_b16.log"
pack lite0_b16
python3 scripts/gpu_train.py --data .gpu/data/train --out "$RUNS/plain_b64" --minutes "$MIN" --lr 1e-3 --report-data .gpu/data/val \
  model.base_width=64 model.depth=4 model.deep_supervision=true 2>&1 | tee "$RUNS/plain_b64.log"
evaluate "$RUNS/plain_b64" | tee -a "$RUNS/plain_b64.log"
pack plain_b64
