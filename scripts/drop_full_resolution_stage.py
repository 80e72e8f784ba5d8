"""Write a trained model without its full-resolution decoder stage (no retraining): the deep-supervision head
of
its half-resolution stage becomes the output head. For the accuracy and latency studies (docs/accuracy.md,
docs/performance.md); in a recipe, `trainer.drop_full_resolution_stage: true` does the same at the end of
training.

    .venv/bin/python scripts/drop_full_resolution_stage.py cpu --out
    runs/cpu_without_full_resolution_stage/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lesionseg.models import drop_full_resolution_stage, load_model, save_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", help="a model file or bundled name, trained with deep supervision")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    loaded = load_model(args.weights)
    model, cfg = drop_full_resolution_stage(loaded.model, loaded.config)
    card = {
        **loaded.card,
        "name": f"{loaded.card.get('name', args.weights)} without its full-resolution stage",
        "derived_from": str(loaded.path),
        "derivation": "full-resolution decoder stage dropped; the 1/2-resolution deep-supervision head is "
        "the "
        "output (scripts/drop_full_resolution_stage.py)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.out, model, cfg, loaded.image_size, card, color_constancy=loaded.color_constancy)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
