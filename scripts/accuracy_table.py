"""The accuracy study's table (docs/accuracy.md) from run directories and bundled models.

    .venv/bin/python scripts/accuracy_table.py runs/lite0_160_ema_cpu runs/lite0_160_ema_cpu_selftrain \
        --bundled cpu default [--data ../shared/data/isic2017] [--out docs/accuracy.md]

For every model: `lesionseg evaluate`'s path (each image at its own size, threshold 0.5) on the seeded 10 %
split carved from ISIC 2017 train — the selection set — without and with flip TTA (3 views), then on the
official validation set, which is reported and never used to choose. For runs with a weight EMA, the
per-epoch scores in metrics.csv (carved split at the network's input size) give EMA vs raw weights at the
selected epoch and at the end. Cached per model file in <run>/accuracy.json, so rerunning only adds rows.
Runs of one recipe that differ only in `trainer.seed` (and train on the same data) are also summarised over
seeds: mean ± half the range, the honest unit for differences under ~0.01. Last, flip TTA minus one view per
model (paired), averaged over every row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scoring import score

ROOT = Path(__file__).resolve().parents[1]


def measure(model: Path, data: Path, cache: Path, run: Path | None = None) -> dict:
    """Carved split and val, one view and flip TTA (scoring.score, cached in `cache`)."""
    out = {}
    for name, tta in (("plain", False), ("flip_tta", True)):
        for split, m in score(model, data, cache, tta=tta, run=run).items():
            out[f"{split}_{name}"] = {k: round(m[k], 4) for k in ("mean_jaccard", "thresholded_jaccard",
                                                                   "mean_dice")}
    return out


def ema_columns(run: Path) -> dict:
    from lesionseg.run_dir import RunDir

    if not RunDir(run).metrics_path.is_file():
        return {}
    rows = [r for r in RunDir(run).metrics() if r.get("val_mean_jaccard_raw") is not None]
    if not rows:
        return {}
    best = max(rows, key=lambda r: float(r["val_mean_jaccard"]))
    return {"ema_best": float(best["val_mean_jaccard"]), "raw_at_best": float(best["val_mean_jaccard_raw"]),
            "raw_best": max(float(r["val_mean_jaccard_raw"]) for r in rows),
            "ema_last": float(rows[-1]["val_mean_jaccard"]),
            "raw_last": float(rows[-1]["val_mean_jaccard_raw"]), "epochs": len(rows),
            "minutes": float(rows[-1]["elapsed_min"])}


def describe(card: dict) -> str:
    data = card.get("training_data") or card.get("data") or {}
    train = data.get("train") if isinstance(data, dict) else None
    n = data.get("n_train") if isinstance(data, dict) else None
    extra = f" (with {', '.join(Path(t).name for t in train[1:])})" if isinstance(train, list) else ""
    return f"{n} images{extra}" if n else "—"


def recipe_and_seed(run: Path, card: dict) -> tuple[str, int] | None:
    """The run's config without its training seed, plus its data (equal = one recipe), and that seed."""
    from lesionseg.config import dump_config
    from lesionseg.run_dir import RunDir

    if not RunDir(run).is_run():
        return None
    cfg = RunDir(run).config()
    seed, cfg.trainer.seed = cfg.trainer.seed, 0
    return dump_config(cfg) + describe(card), seed


def seed_summary(groups: dict[str, list[tuple[str, int, dict]]]) -> list[str]:
    lines = ["", "Over seeds (mean ± half the range):", "",
             "| recipe (runs) | seeds | carved J | val J | val J, flip TTA | val thresholded J |",
             "| --- | --- | --- | --- | --- | --- |"]
    for members in groups.values():
        if len(members) < 2:
            continue

        def stat(split: str, metric: str = "mean_jaccard", members=members) -> str:
            v = [m[split][metric] for _, _, m in members]
            return f"{sum(v) / len(v):.4f} ± {(max(v) - min(v)) / 2:.4f}"

        names = ", ".join(f"`{n}`" for n, _, _ in members)
        seeds = ", ".join(str(s) for _, s, _ in members)
        lines.append(f"| {names} | {seeds} | {stat('carved_plain')} | {stat('val_plain')} | "
                     f"{stat('val_flip_tta')} | {stat('val_plain', 'thresholded_jaccard')} |")
    return lines if len(lines) > 5 else []


def tta_summary(measured: list[dict]) -> list[str]:
    """Flip TTA minus one view, per model (a paired difference: same weights, same images), over all rows."""
    if len(measured) < 2:
        return []
    parts = []
    for split in ("carved", "val"):
        d = [m[f"{split}_flip_tta"]["mean_jaccard"] - m[f"{split}_plain"]["mean_jaccard"] for m in measured]
        parts.append(
            f"{split} {sum(d) / len(d):+.4f} on average ({sum(x > 0 for x in d)} of {len(d)} higher, "
            f"{min(d):+.4f} to {max(d):+.4f})"
        )
    return [
        "",
        f"Flip TTA minus one view, paired, over the {len(measured)} models above: {'; '.join(parts)}.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="*")
    ap.add_argument("--bundled", nargs="*", default=[])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy.md")
    args = ap.parse_args()
    from lesionseg.models import load_model
    from lesionseg.models.bundled import bundled_model_path

    entries = [(name, bundled_model_path(name), None) for name in args.bundled]
    entries += [(run.name, run / "model.pt", run) for run in args.runs]
    lines = [
        (
            "| model | trained on | minutes (epochs) | carved J | carved J, flip TTA | val J | val J, flip "
            "TTA | "
            "val thresholded J | EMA vs raw (carved, per epoch: best EMA / raw then / best raw / last EMA / "
            "last raw) |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[str, list[tuple[str, int, dict]]] = {}
    measured: list[dict] = []
    for name, model, run in entries:
        if not model.is_file():
            print(f"{model}: no model file, skipped", file=sys.stderr)
            continue
        cache = run / "accuracy.json" if run else ROOT / "runs" / f"accuracy_{name}.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        m = measure(model, args.data, cache, run)
        measured.append(m)
        card = load_model(model).card
        ema = ema_columns(run) if run else {}
        minutes = ema.get("minutes") or card.get("training_minutes") or "—"
        minutes = minutes if isinstance(minutes, str) else f"{minutes:.0f}"
        if ema:  # runs on shared cores get fewer epochs in the same minutes
            minutes += f" ({ema['epochs']})"
        ema_text = (f"{ema['ema_best']:.4f} / {ema['raw_at_best']:.4f} / {ema['raw_best']:.4f} / "
                    f"{ema['ema_last']:.4f} / {ema['raw_last']:.4f}") if ema else "—"
        label = f"`{name}` (bundled)" if run is None else f"`{name}`"
        lines.append(
            f"| {label} | {describe(card)} | {minutes} | "
            f"{m['carved_plain']['mean_jaccard']:.4f} | {m['carved_flip_tta']['mean_jaccard']:.4f} | "
            f"{m['val_plain']['mean_jaccard']:.4f} | {m['val_flip_tta']['mean_jaccard']:.4f} | "
            f"{m['val_plain']['thresholded_jaccard']:.4f} | {ema_text} |"
        )
        recipe = recipe_and_seed(run, card) if run else None
        if recipe is not None:
            groups.setdefault(recipe[0], []).append((name, recipe[1], m))
    table = "\n".join(lines + seed_summary(groups) + tta_summary(measured)) + "\n"
    text = args.out.read_text() if args.out.is_file() else ""
    begin, end = "<!-- accuracy table: begin -->", "<!-- accuracy table: end -->"
    if begin in text and end in text:
        text = text[: text.index(begin) + len(begin)] + "\n" + table + text[text.index(end):]
    else:
        text = text + f"\n{begin}\n{table}{end}\n"
    args.out.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
