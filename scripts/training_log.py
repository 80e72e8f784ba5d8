"""Generate the run table of docs/training.md from run directories (every run made toward the recipe).

    .venv/bin/python scripts/training_log.py [RUN ...]     # default: the runs listed in RUNS below

For each run: its recipe (config.yaml of `lesionseg train`, or summary.json of the earlier GPU loop's runs),
params, epochs, minutes, median train img/s, and figures on the seeded 10 % split carved from ISIC 2017
train (`lesionseg evaluate`'s path, cached in RUN/eval_carved.json); official-val figures are shown only
where RUN/eval_val/metrics.json exists (written by `lesionseg evaluate --out RUN/eval_val` for the final
candidates). The table replaces what lies between the markers in docs/training.md; the prose around it
is kept. `--curves RUN=NAME` plots a run's curves to docs/NAME_training_curves.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import yaml

from lesionseg.evaluation import carved_split, evaluate
from lesionseg.inference import Segmenter
from lesionseg.io import write_text
from lesionseg.models import count_parameters, load_model

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "training.md"
BEGIN, END = "<!-- runs:begin -->", "<!-- runs:end -->"
RUNS = ["runs/bundled", "runs/ablation/baseline", "runs/ablation/cbam", "runs/ablation/deep_supervision",
        "runs/ablation/transposed", "runs/ablation/elastic", "runs/lite0_160", "runs/gpu/lite0_b16",
        "runs/gpu/plain_b64"]
CHECKED = ("mean_jaccard", "mean_dice", "thresholded_jaccard")


def recipe(run: Path) -> tuple[str, str, dict]:
    """(where it ran, a one-line recipe, the model config)."""
    if (run / "summary.json").is_file():
        s = json.loads((run / "summary.json").read_text())
        m, a = s["config"], s["args"]
        where = s["device"].split(" on ")[-1].split(";")[0]
        return (
            where,
            (
                f"{m['encoder']} b{m['base_width']} d{m['depth']}{' DS' if m['deep_supervision'] else ''}, "
                f"{a['image_size']}², batch {a['batch_size']}, lr {a['lr']}, {a['minutes']} min budget "
                "(earlier GPU loop)"
            ),
            m,
        )
    c = yaml.safe_load((run / "config.yaml").read_text())
    m, d, o = c["model"], c["data"], c["optim"]
    opts = [f"{m.get('encoder', 'plain')} b{m['base_width']} d{m['depth']}"]
    opts += ["DS"] * bool(m.get("deep_supervision")) + ["CBAM"] * (m.get("attention") == "cbam")
    opts += ["transposed"] * (m.get("upsample") == "transposed")
    opts += [f"elastic {c['augment'].get('elastic')}"] * bool(c["augment"].get("elastic"))
    if o.get("schedule") == "cosine_time":
        opts.append(f"{c['trainer']['max_minutes']} min cosine")
    hardware = load_model(run / "model.pt").card.get("hardware") if (run / "model.pt").is_file() else None
    where = hardware.split(",")[0] if hardware else "2-core CPU"
    return where, f"{' '.join(opts)}, {d['image_size']}², batch {d['batch_size']}, lr {o['lr']}", m


def carved_figures(run: Path, data: Path) -> dict | None:
    cache = run / "eval_carved.json"
    model = run / "model.pt"
    if cache.is_file() and model.is_file() and cache.stat().st_mtime >= model.stat().st_mtime:
        return json.loads(cache.read_text())
    if not model.is_file():
        return None
    figures = evaluate(Segmenter.load(model), carved_split(data / "train")).metrics
    write_text(cache, json.dumps(figures, indent=2))
    return figures


def row(run: Path, data: Path) -> str:
    where, text, _ = recipe(run)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    img_s = statistics.median(float(r["train_img_per_s"]) for r in rows)
    carved = carved_figures(run, data)
    if carved is None:  # weights not kept (too large to bring back from the GPU): the loop's own best score
        best = max(float(r["val_mean_jaccard"]) for r in rows)
        carved_cells = [f"{best:.4f}†", "", ""]
    else:
        carved_cells = [f"{carved[k]:.4f}" for k in CHECKED]
    val_file = run / "eval_val" / "metrics.json"
    val = json.loads(val_file.read_text()) if val_file.is_file() else None
    val_cells = [f"{val[k]:.4f}" for k in CHECKED] if val else ["", "", ""]
    params = (count_parameters(load_model(run / "model.pt").model) if (run / "model.pt").is_file()
              else json.loads((run / "summary.json").read_text())["params"])
    return " | ".join(["", f"`{run.relative_to(ROOT) if run.is_absolute() else run}`", where, text,
                       f"{params / 1e6:.2f} M", str(len(rows)), f"{float(rows[-1]['elapsed_min']):.1f}",
                       f"{img_s:.1f}", *carved_cells, *val_cells, ""]).strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017")
    ap.add_argument("--curves", nargs="*", default=[], metavar="RUN=NAME",
                    help="also plot RUN's training curves to docs/NAME_training_curves.png")
    args = ap.parse_args()
    runs = [r if r.is_absolute() else ROOT / r for r in (args.runs or map(Path, RUNS))]
    lines = [
        BEGIN,
        "",
        "| run | where | recipe | params | epochs | minutes | train img/s | carved mean J | carved Dice | "
        "carved thr. J | val mean J | val Dice | val thr. J |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [row(r, args.data) for r in runs if (r / "metrics.csv").is_file()]
    lines += [
        "",
        "Generated by `scripts/training_log.py` from the run directories. Carved = the seeded 10 % split "
        "of ISIC 2017 train (200 images) through `lesionseg evaluate`'s path; † = the GPU loop's own "
        "per-image Jaccard at its input size (weights not kept). Val = the official ISIC 2017 validation set "
        "(150 images), evaluated only for the final candidates. Minutes are wall clock including "
        "validation; img/s is the median over epochs.",
        "",
        END,
    ]
    text = DOC.read_text() if DOC.is_file() else f"# Training log\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    write_text(DOC, head + "\n".join(lines) + tail)
    for item in args.curves:
        from lesionseg.viz import training_curves

        run, _, name = item.partition("=")
        training_curves(Path(run) / "metrics.csv", ROOT / "docs" / f"{name}_training_curves.png")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
