"""Bundle a run's model inside the package, with its measured figures on the model card.

    .venv/bin/python scripts/bundle_model.py runs/gpu/lite0_b16 --as default --name "..."
    .venv/bin/python scripts/bundle_model.py runs/lite0_160 --as cpu --name "..."

Scores the run's model.pt with `lesionseg evaluate`'s path on the seeded 10 % split carved from ISIC 2017
train (the selection set) and on the official validation set (reported, never used to choose), stores the
weights in fp16 when that moves carved mean Jaccard by < 0.0005, and writes src/lesionseg/assets/<file>.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from lesionseg.evaluation import carved_split, evaluate, load_labelled
from lesionseg.inference import Segmenter
from lesionseg.inference.backends import TorchBackend
from lesionseg.models import load_model, save_model
from lesionseg.models.registry import BUNDLED, default_model_path

ROOT = Path(__file__).resolve().parents[1]
LICENCE = ("Weights for research use only: trained on ISIC Archive images released under CC-BY-NC or CC-0 "
           "(cite Codella et al., ISBI 2017 challenge); encoder initialised from EfficientNet-Lite0 ImageNet "
           "weights (Apache-2.0) where the architecture says so. Code: Apache-2.0.")


def rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--as", dest="bundle_as", choices=sorted(BUNDLED), default="default")
    ap.add_argument("--name", required=True, help="model card name")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017")
    args = ap.parse_args()
    source = load_model(args.run_dir / "model.pt")
    carved = carved_split(args.data / "train")
    full = evaluate(Segmenter(TorchBackend(source)), carved).metrics
    with tempfile.TemporaryDirectory() as tmp:
        half_path = Path(tmp) / "half.pt"
        save_model(half_path, source.model, source.config, source.image_size, source.card, half=True)
        half = evaluate(Segmenter(TorchBackend(half_path)), carved).metrics
        use_half = abs(half["mean_jaccard"] - full["mean_jaccard"]) < 5e-4
        stored = Segmenter(TorchBackend(half_path if use_half else source))
        figures = {"carved_split": half if use_half else full,
                   "isic2017_val": evaluate(stored, load_labelled(args.data / "val")).metrics}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    card = {
        **{k: v for k, v in source.card.items() if k not in ("figures", "weights_storage")},
        "name": args.name,
        "licence": LICENCE,
        "weights_storage": "fp16" if use_half else "fp32",
        "figures": {"isic2017_val": rounded(figures["isic2017_val"]),
                    "carved_split_of_train": rounded(figures["carved_split"]),
                    "fp32_carved_split_mean_jaccard": round(full["mean_jaccard"], 4),
                    "evaluated_with": "lesionseg evaluate (threshold 0.5, no TTA, no post-processing); carved "
                                      "split = seeded 10% of ISIC 2017 train (200 images), used for selection",
                    "source_run": str(args.run_dir),
                    "commit": commit},
    }
    target = default_model_path(args.bundle_as)
    save_model(target, source.model, source.config, source.image_size, card, half=use_half)
    print(json.dumps(card["figures"], indent=2))
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
