"""Which cases train and which validate, in one place: a dataset's own list (`val_ids.txt`), the seeded
split carved from a training folder, the ids a run leaves out, k folds and nnU-Net's `splits.json`, and the
split settings a model records. The same ids for the same folder, list, fraction and seed, always."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .config import DataConfig
from .errors import UserError
from .io.atomic import write_text

DATASET_VAL_IDS = "val_ids.txt"  # a dataset's own validation list: never trained on, never chosen on
SPLITS = "splits.json"  # a cross-validation run's folds, nnU-Net's format
SPLIT_SEED = 12345  # nnU-Net's seed for its five folds


def read_ids(folder: Path, listing: str) -> list[str]:
    given = Path(listing)  # as given (absolute, or from the working directory), else inside the folder
    path = given if given.is_absolute() or given.is_file() else folder / listing
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the id list ({exc})") from None


def listed(known, folder: Path, listing) -> list[str]:
    """The ids a listing names (a file, or the ids themselves), each one checked against `known`."""
    wanted = list(listing) if isinstance(listing, (list, tuple)) else read_ids(Path(folder), str(listing))
    known = set(known)
    missing = [i for i in wanted if i not in known]
    if missing:
        raise UserError(f"{listing}: {len(missing)} id(s) not in {folder} (e.g. {missing[0]})")
    return wanted


def kept_indices(pairs, folder: Path, listing: str) -> list[int]:
    """The pairs not named in `listing` (data.exclude_ids: a test set, or another fold's held-out cases)."""
    ids = set(listed([p.id for p in pairs], folder, listing))
    kept = [i for i, p in enumerate(pairs) if p.id not in ids]
    if len(kept) < 2:
        raise UserError(f"{listing}: leaves {len(kept)} case(s) in {folder}; training needs at least 2")
    return kept


def listed_split(pairs, folder: Path, listing: str) -> tuple[list[int], list[int]]:
    """(train, validation) indices with the ids of `listing` (data.val_ids) as validation."""
    known = {p.id: i for i, p in enumerate(pairs)}
    ids = listed(known, folder, listing)
    val = sorted(known[i] for i in set(ids))
    if not val or len(val) == len(pairs):
        raise UserError(f"{listing}: the list must leave some pairs for training and name at least one")
    chosen = set(val)
    return [i for i in range(len(pairs)) if i not in chosen], val


def split_pairs(pairs: list, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of indices; the same seed and ids always give the same split."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, int(round(len(pairs) * val_fraction)))
    if n_val >= len(pairs):
        raise ValueError("need at least 2 pairs to split off a validation set")
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return train, val


def make_splits(ids: list[str], k: int, seed: int = SPLIT_SEED) -> tuple[list[dict], str | None]:
    """K seeded folds of `ids`; with fewer cases than folds, leave-one-out (and a note saying so)."""
    if k < 2:
        raise UserError(f"--folds {k}: needs at least 2 folds")
    if len(ids) < 2:
        raise UserError(f"{len(ids)} case(s): cross-validation needs at least 2")
    note = None
    if len(ids) < k:
        note = f"{len(ids)} cases are fewer than {k} folds: leave-one-out ({len(ids)} folds) instead"
        k = len(ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    folds = [sorted(order[i::k]) for i in range(k)]
    return [{"train": sorted(set(ids) - set(f)), "val": f} for f in folds], note


def read_splits(path: Path, ids: list[str]) -> list[dict]:
    """A splits.json in nnU-Net's format, checked against the data: every problem in one line."""
    try:
        splits = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable splits file ({exc})") from None
    shape_ok = (
        isinstance(splits, list)
        and len(splits) >= 2
        and all(
            isinstance(s, dict) and all(isinstance(s.get(key), list) and s[key] for key in ("train", "val"))
            for s in splits
        )
    )
    if not shape_ok:
        raise UserError(f'{path}: expected a list of at least 2 folds, each {{"train": [ids], "val": [ids]}}')
    known = set(ids)
    for i, s in enumerate(splits):
        unknown = sorted({str(c) for c in s["train"] + s["val"]} - known)
        if unknown:
            raise UserError(
                f"{path}: fold {i} names {len(unknown)} id(s) not in the data (e.g. {unknown[0]})"
            )
        both = sorted(set(s["train"]) & set(s["val"]))
        if both:
            raise UserError(f"{path}: fold {i} has {both[0]} in both train and val")
        if len(s["train"]) < 2:
            raise UserError(f"{path}: fold {i} trains on {len(s['train'])} case; at least 2 are needed")
    return [{"train": sorted(map(str, s["train"])), "val": sorted(map(str, s["val"]))} for s in splits]


def fold_splits(folder: Path, out: Path, k: int | None, given: Path | None, ids: list[str]) -> list[dict]:
    """The splits of this run: OUT/splits.json when the run exists (a resume), else the user's file or K
    seeded folds of the cases (`ids`) outside the dataset's own validation list; written to
    OUT/splits.json."""
    own = folder / DATASET_VAL_IDS
    if own.is_file():
        held = set(read_ids(folder, DATASET_VAL_IDS))
        ids = [i for i in ids if i not in held]
        print(f"folds: the {len(held)} cases of {own} stay out of every fold", file=sys.stderr)
    recorded = out / SPLITS
    if recorded.is_file():
        splits = read_splits(recorded, ids)
        if given is not None and read_splits(given, ids) != splits:
            raise UserError(f"{out}: holds a run with other splits ({recorded}); use another --out")
        return splits
    if given is not None:
        splits = read_splits(given, ids)
    else:
        splits, note = make_splits(ids, k or 5)
        if note:
            print(f"folds: {note}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    write_text(recorded, json.dumps(splits, indent=1) + "\n")
    return splits


def split_settings(source: str | Path | dict | None) -> tuple[float, int]:
    """(data.val_fraction, data.split_seed) a model was trained with: from a run directory's config, or
    from a model's card (`recipe` of a run's model.pt, `recipe_config` of a bundled one; given as the card
    itself, or as a .pt file or bundled name to read it from); the schema's defaults when neither says."""
    from .run_dir import RunDir

    card = source if isinstance(source, dict) else {}
    if isinstance(source, (str, Path)):
        if RunDir(source).is_run():
            data = RunDir(source).config().data
            return data.val_fraction, data.split_seed
        from .model_file import ModelFile
        from .models.bundled import resolve_weights

        path = resolve_weights(source)
        if path.suffix == ".pt" and path.is_file():
            card = ModelFile.read(path).card
    from .model_file import training_recipe

    data = training_recipe(card).get("data", {})
    return data.get("val_fraction", DataConfig.val_fraction), data.get("split_seed", DataConfig.split_seed)
