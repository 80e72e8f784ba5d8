"""The studies' one scorer: a model on its carved split of a data set's train folder (the selection set,
with the model's own split settings) and on its val folder, through `lesionseg evaluate`'s path, cached in a
JSON file keyed by the model file's bytes and the settings, so a retrained model is scored again.

Imported by the scripts beside it (a script's own folder is on sys.path when it runs).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

SPLITS = ("carved", "val")
# The flip TTA of the studies: one scale, three views (identity, horizontal, vertical).
FLIP_TTA_SCALES = [1.0]


def file_key(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


def labelled_splits(data: Path, of: str | Path | dict | None = None) -> dict:
    """{"carved": the seeded split of data/train (with `of`'s split settings), "val": data/val}."""
    from lesionseg.evaluation import carved_split, load_labelled

    return {"carved": carved_split(data / "train", of=of), "val": load_labelled(data / "val")}


def score(model: str | Path, data: Path, cache: Path | None = None, tta: bool = False,
          splits: tuple[str, ...] = SPLITS, run: Path | None = None) -> dict[str, dict[str, float]]:
    """{split: metrics} for `model` (a file or a bundled name); `run`: its run directory, whose split
    settings define the carved split (else the model file's card says)."""
    from lesionseg.evaluation import evaluate
    from lesionseg.inference import Segmenter

    seg = Segmenter.load(model, tta=tta, tta_scales=FLIP_TTA_SCALES)
    key = f"{file_key(seg.weights_path)}-{'flip' if tta else 'plain'}-{'+'.join(splits)}"
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        if key in stored:
            return stored[key]
    labelled = labelled_splits(data, of=run or seg.card)  # the card is loaded already: no second read
    out = {}
    for split in splits:
        out[split] = evaluate(seg, labelled[split]).metrics
        print(f"{model}: {split} {'flip TTA' if tta else 'one view'} mean J {out[split]['mean_jaccard']:.4f}",
              file=sys.stderr, flush=True)
    if cache is not None:
        stored = json.loads(cache.read_text()) if cache.is_file() else {}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**stored, key: out}, indent=2) + "\n")
    return out
