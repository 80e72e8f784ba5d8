"""Two inference-side levers of the accuracy study (docs/accuracy.md), without training: averaging the
probabilities of several trained models, and running one model at another input size than it was trained at.

    .venv/bin/python scripts/ensemble_study.py control=runs/lite0_160_ema_cpu/model.pt \
        lite2=runs/lite2_160_ema_cpu/model.pt default=default [--sizes 128 160 192 224] [--tta]

Every probability map comes from `Segmenter.predict_batch` (the path of `lesionseg evaluate`: each image at
its
own size, threshold 0.5) on the carved split of ISIC 2017 train (the selection set) and on the official val
set
(reported, never used to choose); maps are cached under --cache by model file, so adding a model only computes
that model.
Prints markdown: each model alone, then the --top combinations best on the carved split; with --sizes, the
first
model at each input size (one view, no flips).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import numpy as np

from lesionseg.inference import Segmenter
from lesionseg.inference.backends import open_backend
from lesionseg.metrics import aggregate, confusion

# scripts/ is on sys.path when a script in it runs
from scoring import FLIP_TTA_SCALES, file_key, labelled_splits

SPLITS = ("carved", "val")


def scores(probs: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    return aggregate([confusion(p > 0.5, t) for p, t in zip(probs, truths)])


def probabilities(segmenter: Segmenter, images: list[np.ndarray], cache: Path) -> list[np.ndarray]:
    if cache.is_file():
        return [p.astype(np.float32) for p in np.load(cache)]
    probs = segmenter.predict_batch(images)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, np.stack(probs).astype(np.float16))  # every ISIC image here is 256², so they stack
    return probs


def row(label: str, results: dict[str, dict[str, float]]) -> str:
    c, v = results["carved"], results["val"]
    return (f"| {label} | {c['mean_jaccard']:.4f} | {v['mean_jaccard']:.4f} | "
            f"{v['thresholded_jaccard']:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="NAME=WEIGHTS (a model file or a bundled name)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/isic2017"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help="input sizes for the first model")
    parser.add_argument("--tta", action="store_true", help="each model with flip TTA (3 views)")
    parser.add_argument("--top", type=int, default=8, help="combinations shown besides the single models")
    parser.add_argument("--cache", type=Path, default=Path("runs/ensemble_study"))
    args = parser.parse_args()
    models = dict(spec.split("=", 1) for spec in args.models)
    labelled = labelled_splits(args.data)
    images = {s: [c.image for c in labelled[s].cases] for s in SPLITS}
    truths = {s: [c.truth for c in labelled[s].cases] for s in SPLITS}
    mode = "flip" if args.tta else "plain"

    probs = {}
    for name, weights in models.items():
        segmenter = Segmenter.load(weights, tta=args.tta, tta_scales=FLIP_TTA_SCALES)
        key = file_key(segmenter.weights_path)  # a retrained model under the same name is not read from cache
        for s in SPLITS:
            probs[name, s] = probabilities(segmenter, images[s], args.cache / f"{name}_{key}_{s}_{mode}.npy")
    rows = []
    for k in range(1, len(models) + 1):
        for combo in itertools.combinations(models, k):
            results = {s: scores([sum(ps) / k for ps in zip(*(probs[n, s] for n in combo))], truths[s])
                       for s in SPLITS}
            rows.append(
                (k, results["carved"]["mean_jaccard"], row(" + ".join(f"`{n}`" for n in combo), results))
            )
    rows.sort(key=lambda r: -r[1])
    shown = [r for r in rows if r[0] == 1] + [r for r in rows if r[0] > 1][:args.top]
    print(
        f"Mean of probabilities ({'flip TTA' if args.tta else 'one view'} per model): each model alone, then "
        "the "
        f"{args.top} combinations best on the carved split:\n"
    )
    print("| models | carved J | val J | val thresholded J |\n| --- | --- | --- | --- |")
    print("\n".join(r for _, _, r in shown))

    if args.sizes:
        name, weights = next(iter(models.items()))
        print(f"\n`{name}` at other input sizes (one view):\n")
        print("| input size | carved J | val J | val thresholded J |\n| --- | --- | --- | --- |")
        backend = open_backend(weights, "torch")
        key = file_key(backend.path)
        for size in args.sizes:
            # a Segmenter resizes every image to its backend's input size, read when it is built
            backend.file = dataclasses.replace(
                backend.file, preprocessing=dataclasses.replace(backend.preprocessing, image_size=size))
            segmenter = Segmenter(backend, tta=False)
            results = {
                s: scores(
                    probabilities(segmenter, images[s], args.cache / f"{name}_{key}_{s}_size{size}.npy"),
                    truths[s],
                )
                for s in SPLITS
            }
            print(row(f"{size}²", results))


if __name__ == "__main__":
    main()
