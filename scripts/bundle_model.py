"""Bundle a run's model inside the package, with its measured figures on the model card.

    .venv/bin/python scripts/bundle_model.py runs/lite0_256_gpu --as default --name "..." --recipe "..."
    --training "..."
    .venv/bin/python scripts/bundle_model.py --recard cpu [--recipe "..."] [--provenance "..."]
    --tta-scales 1.0: TTA (scales x flips) becomes the model's default if it wins on the carved split.

The card names the model's config (configs/<recipe name>.yaml) and the command that trains it
(scripts/train_model.sh <recipe name>); `--recard` rewrites only those card fields of a bundled model.

Scores the run's model.pt with `lesionseg evaluate`'s path on the seeded 10 % split carved from ISIC 2017
train (the selection set) and on the official validation set (reported, never used to choose), stores the
weights in fp16 when that moves carved mean Jaccard by < 0.0005, and writes src/lesionseg/assets/<file>.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path

from lesionseg.evaluation import carved_split, evaluate, load_labelled
from lesionseg.inference import Segmenter
from lesionseg.inference.backends import TorchBackend
from lesionseg.model_file import ModelFile
from lesionseg.models import load_model
from lesionseg.models.bundled import BUNDLED, bundled_model_path
from lesionseg.pairs import discover, is_volume_dataset

ROOT = Path(__file__).resolve().parents[1]
ISIC = ROOT.parent / "shared" / "data" / "isic2017"
LICENCE = ("Weights for research use only: trained on ISIC Archive images released under CC-BY-NC or CC-0 "
           "(cite Codella et al., ISBI 2017 challenge); encoder initialised from EfficientNet-Lite0 ImageNet "
           "weights (Apache-2.0) where the architecture says so. Code: Apache-2.0.")


TTA_SUFFIX = "_val_with_model_default_tta"
CLICKS_KEY = "val_clicks"
MAX_CLICKS = 5


def clicks_figures(segmenter, labelled) -> dict:
    """A promptable model's interactive protocol on the validation set (`evaluate --clicks 5`), else {}."""
    from lesionseg.evaluation import evaluate_clicks

    if not segmenter.backend.file.click_channels:
        return {}
    return {CLICKS_KEY: evaluate_clicks(segmenter, labelled, MAX_CLICKS)}


def rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path, nargs="?")
    ap.add_argument("--as", dest="bundle_as", choices=sorted(BUNDLED), default="default")
    ap.add_argument("--recard", choices=sorted(BUNDLED), help="only rewrite this bundled model's card fields")
    ap.add_argument("--name", help="model card name")
    ap.add_argument("--recipe", help="the recipe in words, one line")
    ap.add_argument("--training", help="epochs, minutes, hardware, one line")
    ap.add_argument("--provenance", help="how these weights were made, when not by the card's command")
    ap.add_argument("--label",
                    help="what the model segments, shown by predict, reports and the service (lesion, polyp)")
    ap.add_argument("--data", type=Path, default=ISIC, help="a dataset root with train/ and val/")
    ap.add_argument("--licence", help="the weights' licence (bundling: the ISIC one unless given)")
    ap.add_argument(
        "--tta-scales",
        type=float,
        nargs="+",
        help="make TTA at these scales (x flips) the model's default if it wins on the carved split",
    )
    args = ap.parse_args()
    if args.recard:
        fields = {
            k: v
            for k, v in (("recipe", args.recipe), ("training", args.training),
                         ("provenance", args.provenance), ("name", args.name), ("label", args.label),
                         ("licence", args.licence))
            if v
        }
        if args.tta_scales:
            fields.update(tta_fields(args.recard, args.data, args.tta_scales))
        recard(args.recard, fields)
        return
    if not (args.run_dir and args.name and args.recipe and args.training):
        ap.error("bundling a run needs RUN_DIR, --name, --recipe and --training")
    if not (args.data / "train").is_dir():
        bundle_with_fixed_split(args)
        return
    source = load_model(args.run_dir / "model.pt")
    carved = carved_split(args.data / "train", of=args.run_dir)
    full = evaluate(Segmenter(TorchBackend(source)), carved).metrics
    with tempfile.TemporaryDirectory() as tmp:
        fp16_path = Path(tmp) / "half.pt"
        source.file.write(fp16_path, fp16_weights=True)
        fp16 = evaluate(Segmenter(TorchBackend(fp16_path)), carved).metrics
        use_fp16 = abs(fp16["mean_jaccard"] - full["mean_jaccard"]) < 5e-4
        stored = Segmenter(TorchBackend(fp16_path if use_fp16 else source))
        val = load_labelled(args.data / "val")
        figures = {"carved_split": fp16 if use_fp16 else full,
                   f"{args.data.name}_val": evaluate(stored, val).metrics,
                   **clicks_figures(stored, val)}
        inference = {}
        if args.tta_scales:
            inference, with_tta = choose_tta(stored, carved, figures["carved_split"]["mean_jaccard"],
                                             args.tta_scales, val)
            if with_tta:
                figures[f"{args.data.name}{TTA_SUFFIX}"] = with_tta
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    card = {
        **{
            k: v
            for k, v in source.card.items()
            if k not in ("figures", "weights_storage", "recipe", "training")
        },
        # A run's card holds the config as "recipe";
        # a bundled model's (re-bundled, e.g. derived) as "recipe_config".
        "recipe_config": source.card["recipe"]
        if isinstance(source.card.get("recipe"), dict)
        else source.card.get("recipe_config"),
        "name": args.name,
        "data": source.card.get("data") or source.card.get("training_data"),
        "recipe": args.recipe,
        "training": args.training,
        **({"label": args.label} if args.label else {}),
        **reproduction(args.bundle_as, args.data),
        "licence": args.licence or LICENCE,
        "weights_storage": "fp16" if use_fp16 else "fp32",
        **({"inference": inference} if inference else {}),
        "figures": {
            **{k: rounded(v) for k, v in figures.items() if k.startswith(f"{args.data.name}_val")},
            **({CLICKS_KEY: figures[CLICKS_KEY]} if CLICKS_KEY in figures else {}),
            "carved_split_of_train": rounded(figures["carved_split"]),
            "fp32_carved_split_mean_jaccard": round(full["mean_jaccard"], 4),
            "evaluated_with": "lesionseg evaluate (threshold 0.5, no TTA, no post-processing); carved "
            f"split = seeded 10% of {args.data.name} train ({len(carved.pairs)} images), "
            "used for selection",
            "source_run": str(args.run_dir),
            "commit": commit,
        },
    }
    target = bundled_model_path(args.bundle_as)
    dataclasses.replace(source.file, card=card).write(target, fp16_weights=use_fp16)
    print(json.dumps(card["figures"], indent=2))
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    write_model_cards()


def bundle_with_fixed_split(args) -> None:
    """A dataset in one folder with a fixed validation list (`data.val_ids`, e.g. JSRT), trained with
    `trainer.selection: last`: the list's figures are a report, never a choice. fp16 storage is decided on
    the training ids instead (it must not move their mean Dice by ≥ 0.0005)."""
    from lesionseg.evaluation import LabelledSet, Spacing
    from lesionseg.splits import read_ids

    source = load_model(args.run_dir / "model.pt")
    recipe = source.card["recipe"]
    listing = recipe["data"]["val_ids"]
    if recipe["trainer"]["selection"] != "last":
        raise SystemExit("this run chose its epoch on the validation list: train with "
                         "trainer.selection: last")
    val_ids = set(read_ids(args.data, listing))
    if is_volume_dataset(args.data):  # scored per volume in 3-D
        from lesionseg.evaluation import evaluate_volumes

        train_ids = [p.id for p in discover(args.data) if p.id not in val_ids]

        def score(segmenter, ids):
            labelled = load_labelled(args.data, ids=ids, model_labels=segmenter.labels)
            return evaluate_volumes(segmenter, labelled).metrics
    else:
        everything = load_labelled(args.data)
        train_ids = LabelledSet([p for p in everything.pairs if p.id not in val_ids], None)
        spacing = Spacing.choose(None, source.card)

        def score(segmenter, ids):
            data = ids if isinstance(ids, LabelledSet) else load_labelled(args.data, ids=ids)
            return evaluate(segmenter, data, spacing=spacing).metrics
    full = score(Segmenter(TorchBackend(source)), train_ids)
    with tempfile.TemporaryDirectory() as tmp:
        fp16_path = Path(tmp) / "half.pt"
        source.file.write(fp16_path, fp16_weights=True)
        fp16 = score(Segmenter(TorchBackend(fp16_path)), train_ids)
        use_fp16 = abs(fp16["mean_dice"] - full["mean_dice"]) < 5e-4
        stored = Segmenter(TorchBackend(fp16_path if use_fp16 else source))
        figures = {f"{args.data.name}_val": score(stored, listing)}
        val = load_labelled(args.data, ids=listing, model_labels=stored.labels)
        figures.update(clicks_figures(stored, val))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    card = {
        **{k: v for k, v in source.card.items()
           if k not in ("figures", "weights_storage", "recipe", "training")},
        "recipe_config": recipe, "name": args.name, "data": source.card.get("training_data"),
        "recipe": args.recipe, "training": args.training, **({"label": args.label} if args.label else {}),
        **reproduction(args.bundle_as, args.data), "licence": args.licence or LICENCE,
        "weights_storage": "fp16" if use_fp16 else "fp32",
        "figures": {
            f"{args.data.name}_val": rounded(figures[f"{args.data.name}_val"]),
            **({CLICKS_KEY: figures[CLICKS_KEY]} if CLICKS_KEY in figures else {}),
            "training_ids_mean_dice": {"fp32": round(full["mean_dice"], 4),
                                       "fp16": round(fp16["mean_dice"], 4)},
            "evaluated_with": f"lesionseg evaluate --ids {listing} (threshold 0.5, no TTA, no "
                              "post-processing; "
                              f"{len(val_ids)} validation ids, never trained or chosen on)",
            "source_run": str(args.run_dir), "commit": commit,
        },
    }
    target = bundled_model_path(args.bundle_as)
    dataclasses.replace(source.file, card=card).write(target, fp16_weights=use_fp16)
    print(json.dumps(card["figures"], indent=2))
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    write_model_cards()


def choose_tta(segmenter: Segmenter, carved, plain_jaccard: float, scales: list[float],
               val) -> tuple[dict, dict | None]:
    """The card's `inference` entry, and the val metrics with TTA when it wins. TTA at `scales` becomes the
    model's default only if it beats no TTA on the carved split (the selection set); either way the entry
    records both scores and the cost."""
    tta = Segmenter(segmenter.backend, tta=True, tta_scales=scales)
    with_tta = evaluate(tta, carved).metrics["mean_jaccard"]
    views = 3 * len(set(scales))
    wins = with_tta > plain_jaccard
    print(f"carved split mean Jaccard: no TTA {plain_jaccard:.4f}, TTA {scales} x flips {with_tta:.4f} "
          f"({'default on' if wins else 'stays off'})")
    inference = {**({"tta_scales": list(scales)} if wins else {}),
                 "tta_checked": {"scales": list(scales), "views_per_image": views,
                                 "carved_split_mean_jaccard": {"without": round(plain_jaccard, 4),
                                                               "with": round(with_tta, 4)},
                                 "cost": f"{views} forward passes per image instead of 1"}}
    return inference, rounded(evaluate(tta, val).metrics) if wins else None


def tta_fields(name: str, data: Path, scales: list[float]) -> dict:
    """`inference` (and the val figure with the chosen default) for a bundled model already in place."""
    stored = ModelFile.read(bundled_model_path(name))
    plain = Segmenter(TorchBackend(bundled_model_path(name)), tta=False)
    carved = carved_split(data / "train", of=name)
    inference, with_tta = choose_tta(plain, carved, evaluate(plain, carved).metrics["mean_jaccard"], scales,
                                     load_labelled(data / "val"))
    figures = dict(stored.card.get("figures", {}))
    figures.pop(f"{data.name}{TTA_SUFFIX}", None)
    if with_tta:
        figures[f"{data.name}{TTA_SUFFIX}"] = with_tta
    return {"inference": inference, "figures": figures}


def reproduction(name: str, data: Path = ISIC) -> dict:
    """The card fields that say how to train the bundled model `name` again."""
    recipe = BUNDLED[name]
    root = f"../shared/data/{data.name}"
    prefix = "" if data.name == ISIC.name else f"DATA={root} "
    folder = root if data.exists() and not (data / "train").is_dir() else f"{root}/train"
    return {"config": f"configs/{recipe}.yaml",
            "command": f"{prefix}scripts/train_model.sh {recipe}  (= lesionseg train --data {folder} "
                       f"--config configs/{recipe}.yaml --out runs/{recipe})"}


def recard(name: str, fields: dict) -> None:
    path = bundled_model_path(name)
    stored = ModelFile.read(path)
    data = next((ROOT.parent / "shared" / "data" / k[:-4] for k in stored.card.get("figures", {})
                 if k.endswith("_val")), ISIC)
    card = {**stored.card, **fields, **reproduction(name, data)}
    # a script's free-text settings; the config file says it now
    if isinstance(card.get("recipe_config"), str):
        del card["recipe_config"]
    stored.card = card
    stored.write(path)  # the weights as stored (fp16 stays fp16)
    print(f"rewrote the card of {path}")
    write_model_cards()


def describe_slicing(pre) -> str:
    s = pre.slicing
    axis = "each volume's coarsest axis" if s.axis is None else f"axis {s.axis}"
    return (f"volumes cut along {axis} into slices at {s.spacing_mm[0]:g} x {s.spacing_mm[1]:g} mm in-plane, "
            f"{s.context} neighbouring slice(s) as channels, intensity {pre.intensity.scheme}; labels "
            "stacked back on the input's grid")


def write_model_cards() -> None:
    """docs/model_cards.md from the cards inside every bundled model file (what `lesionseg info` shows)."""
    from lesionseg.models import count_parameters

    lines = ["# Model cards of the bundled models", "",
             "Generated by `scripts/bundle_model.py` from the cards stored inside the model files; "
             "`lesionseg info [NAME]` prints the same.", ""]
    for name in BUNDLED:
        path = bundled_model_path(name)
        if not path.is_file():
            continue
        loaded = load_model(path)
        card, cfg = loaded.card, loaded.config
        figures = card.get("figures", {})
        shown = [(f"{k[:-4]} val ({v.get('n_images', '?')})", v) for k,
                 v in figures.items() if k.endswith("_val")]
        shown += [(f"{k[:-len(TTA_SUFFIX)]} val ({v.get('n_images', '?')}) with the model's default TTA", v)
                  for k, v in figures.items() if k.endswith(TTA_SUFFIX)]
        if "carved_split_of_train" in figures:
            carved = figures["carved_split_of_train"]
            shown.append((f"carved split of train ({carved.get('n_images', '?')})", carved))
        pre = loaded.file.preprocessing
        lines += [
            f"## `{name}` — {card.get('name', '')}",
            "",
            f"- file: `src/lesionseg/assets/{path.name}` ({path.stat().st_size / 1e6:.1f} MB, "
            f"{card.get('weights_storage', 'fp32')}); `--weights {name}` or `--weights {BUNDLED[name]}`",
            f"- architecture: U-Net, encoder `{cfg.encoder}`, decoder base width {cfg.base_width}, depth "
            f"{cfg.depth}, {cfg.upsample} up-sampling, attention {cfg.attention}, deep supervision "
            f"{cfg.deep_supervision}; {count_parameters(loaded.model):,} parameters; " + (
                f"input {loaded.image_size}² (predictions resized back to each image's size)"
                if not pre.covers_volumes else describe_slicing(pre)),
        ]
        for key in ("label", "config", "command", "provenance", "data", "recipe", "training", "selection",
                    "licence"):
            if key in card:
                value = card[key]
                if isinstance(value, dict):  # `lesionseg train`'s card: {'train': ..., 'n_train': ...}
                    value = ", ".join(f"{k} {v}" for k, v in value.items())
                lines.append(f"- {key}: {value}")
        checked = (card.get("inference") or {}).get("tta_checked")
        if checked:
            scores = checked["carved_split_mean_jaccard"]
            scales = card["inference"].get("tta_scales")
            state = f"on by default, scales {scales} x flips" if scales else "off by default"
            switch = "`--no-tta` turns it off" if scales else "`--tta` turns it on"
            lines.append(f"- test-time augmentation: {state} (checked at scales {checked['scales']} x flips, "
                         f"{checked['cost']}; carved split mean Jaccard {scores['without']:.4f} without, "
                         f"{scores['with']:.4f} with; {switch})")
        for label, fig in shown:
            if isinstance(fig, dict) and "per_class" in fig:
                unit = fig["distance_unit"]
                lines.append(f"- {label}, per structure (Dice / Jaccard / HD95 {unit} / NSD at "
                             f"{fig['nsd_tolerance']} {unit}; {fig['pixel_spacing_source']}):")
                lines += [f"  - {n}: {v['dice']:.4f} / {v['jaccard']:.4f} / {v['hd95']:.2f} / {v['nsd']:.4f}"
                          for n, v in [*fig["per_class"].items(),
                                       ("mean", {m[5:]: x for m, x in fig.items() if m.startswith("mean_")})]]
            if isinstance(fig, dict) and "mean_jaccard" in fig and "per_class" not in fig:
                lines.append(f"- {label}: mean Jaccard {fig['mean_jaccard']:.4f}, thresholded Jaccard "
                             f"{fig['thresholded_jaccard']:.4f}, Dice {fig['mean_dice']:.4f}, sensitivity "
                             f"{fig['sensitivity']:.4f}, specificity {fig['specificity']:.4f}")
        clicks = figures.get(CLICKS_KEY)
        if clicks:
            lines.append(f"- val, interactive (`evaluate --clicks {clicks['max_clicks']}`: each click at the "
                         "deepest error), Dice after 0, 1, ... clicks; NoC@85 / NoC@90:")
            lines += [f"  - {n}: {', '.join(f'{d:.4f}' for d in v['dice_after_clicks'])}; {v['noc85']:.2f} / "
                      f"{v['noc90']:.2f}" for n, v in clicks["per_structure"].items()]
        if "figures" in card:
            lines.append(f"- evaluated with: {card['figures'].get('evaluated_with', '')} "
                         f"(commit {card['figures'].get('commit', '?')})")
        lines.append("")
    (ROOT / "docs" / "model_cards.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
