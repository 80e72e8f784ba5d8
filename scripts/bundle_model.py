"""Bundle a run's best model as the package default, with its measured figures on the model card.

    .venv/bin/python scripts/bundle_model.py runs/bundled [--val ../shared/data/isic2017/val]

Evaluates the run's model.pt on the official ISIC 2017 validation set (the same `evaluate` path as the
CLI), stores weights in fp16 when that changes mean Jaccard by < 0.0005, and writes
src/lesionseg/assets/default_model.pt and MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from lesionseg.evaluation import evaluate, load_labelled
from lesionseg.inference import Segmenter
from lesionseg.inference.backends import TorchBackend
from lesionseg.models import load_model, save_model
from lesionseg.models.registry import default_model_path

ROOT = Path(__file__).resolve().parents[1]
LICENCE = ("Weights for research use only: trained on ISIC Archive images released under CC-BY-NC or CC-0 "
           "(cite Codella et al., ISBI 2017 challenge). Code: Apache-2.0.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--val", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017" / "val")
    args = ap.parse_args()
    source = load_model(args.run_dir / "model.pt")
    labelled = load_labelled(args.val)
    full = evaluate(Segmenter(TorchBackend(source)), labelled).metrics
    with tempfile.TemporaryDirectory() as tmp:
        half_path = Path(tmp) / "half.pt"
        save_model(half_path, source.model, source.config, source.image_size, source.card, half=True)
        half = evaluate(Segmenter(TorchBackend(half_path)), labelled).metrics
    use_half = abs(half["mean_jaccard"] - full["mean_jaccard"]) < 5e-4
    figures = half if use_half else full
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    card = {
        **source.card,
        "name": "lesionseg default (cpu_fast U-Net)",
        "licence": LICENCE,
        "weights_storage": "fp16" if use_half else "fp32",
        "figures": {"isic2017_val": {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
                    "isic2017_val_fp32": {k: round(v, 4) if isinstance(v, float) else v for k, v in full.items()},
                    "evaluated_with": "lesionseg evaluate --data isic2017/val (threshold 0.5, no TTA)",
                    "commit": commit},
    }
    save_model(default_model_path(), source.model, source.config, source.image_size, card, half=use_half)
    print(json.dumps(card["figures"], indent=2))
    print(f"wrote {default_model_path()} ({default_model_path().stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
