"""lesionseg against nnU-Net v2 at equal wall-clock minutes on the same cores, the same training cases and the
same validation list; both scored by the same code (`lesionseg.evaluation.score_volume`, per-volume 3-D Dice,
the mean over the validation volumes per structure — what `lesionseg evaluate` reports).

    .venv/bin/python benchmarks/peer_nnunet.py --data ../shared/data/hippocampus --minutes 30 60
    .venv/bin/python benchmarks/peer_nnunet.py --data ../shared/data/acdc --configs 3d_fullres 2d

For each budget M, one after the other (never two at once: the cores are the point):
- lesionseg: `lesionseg train --data D --auto --minutes M`, then `lesionseg evaluate --ids val_ids.txt`;
- nnU-Net, per configuration: `nnUNetTrainerMinutes` (`peer_nnunet_trainer.py`: the stock trainer stopped by
  the clock, its poly schedule spread over the budget), then its own validation prediction (sliding window,
  mirroring) of the same validation list.

The peer lives in its own virtual environment (`--peer-venv`, made on first use): torch==2.13.0 alone first,
then nnunetv2==2.8.1 under a constraint that pins that torch, then PyPI's torchvision removed (a CUDA build
that fails to import beside the CPU torch; the trainer is imported directly, so nothing asks for it).
nnU-Net's own planning and preprocessing (`nnUNetv2_plan_and_preprocess`, its fingerprint, plans and
resampled arrays) run once and are not counted in its minutes; lesionseg's reading and cutting are counted in
neither's budget (each clock starts once training data is ready), and every side's whole wall time is
recorded too. Fold 0 of nnU-Net's `splits_final.json` is the dataset's split: validation = `val_ids.txt`,
training = every other case.

Resumable: each finished entry is kept in the JSON (`--out`), and a rerun skips it. The JSON says the machine
(CPU flags included), the commands, each side's iterations or epochs, and ours − theirs per structure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
NNUNET = "nnunetv2==2.8.1"


def peer_python(venv: Path) -> Path:
    """The peer's Python, its environment made on first use."""
    python = venv / "bin" / "python"
    if (venv / "ready").is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    subprocess.run([*pip, NNUNET, "-c", str(constraints)], check=True)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=True)
    (venv / "ready").write_text(NNUNET + "\n")
    return python


def dataset_cases(data: Path) -> tuple[list[str], list[str], dict[str, int]]:
    """(training ids, validation ids, structure name → label value) of an MSD or nnU-Net v2 folder."""
    ids = sorted(p.name[: -len(".nii.gz")] for p in (data / "labelsTr").glob("*.nii.gz"))
    val = [line.strip() for line in (data / "val_ids.txt").read_text().splitlines() if line.strip()]
    missing = sorted(set(val) - set(ids))
    if missing:
        raise SystemExit(f"{data / 'val_ids.txt'}: {len(missing)} ids have no label file, e.g. {missing[0]}")
    labels = json.loads((data / "dataset.json").read_text())["labels"]
    if all(k.isdigit() for k in labels):  # MSD: value → name
        labels = {name: int(value) for value, name in labels.items()}
    return [i for i in ids if i not in set(val)], val, {k: int(v) for k, v in labels.items()}


def image_of(data: Path, case: str) -> Path:
    for name in (f"{case}_0000.nii.gz", f"{case}.nii.gz"):
        if (data / "imagesTr" / name).is_file():
            return data / "imagesTr" / name
    raise SystemExit(f"{data / 'imagesTr'}: no image for {case}")


def peer_dataset(data: Path, work: Path, dataset_id: int, env: dict, python: Path) -> Path:
    """nnU-Net's raw folder (links to the files), planned and preprocessed by nnU-Net, with our split as
    fold 0. Returns its preprocessed folder."""
    train, val, labels = dataset_cases(data)
    name = f"Dataset{dataset_id:03d}_{data.name}"
    raw = work / "nnUNet_raw" / name
    preprocessed = work / "nnUNet_preprocessed" / name
    if (preprocessed / "splits_final.json").is_file():
        return preprocessed
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for case in train + val:
        for link, target in ((raw / "imagesTr" / f"{case}_0000.nii.gz", image_of(data, case)),
                             (raw / "labelsTr" / f"{case}.nii.gz", data / "labelsTr" / f"{case}.nii.gz")):
            if not link.exists():
                link.symlink_to(target.resolve())
    modality = json.loads((data / "dataset.json").read_text()).get("modality", {"0": "MRI"})
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": modality, "labels": labels, "numTraining": len(train) + len(val),
        "file_ending": ".nii.gz"}, indent=1))
    bin_dir = python.parent
    subprocess.run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "3d_fullres",
                    "2d", "-np", str(os.cpu_count() or 1)], env=env, check=True)
    (preprocessed / "splits_final.json").write_text(json.dumps([{"train": train, "val": val}]))
    return preprocessed


def dice_of(predictions: Path, data: Path, val: list[str], labels: dict[str, int]) -> dict[str, float]:
    """Per structure, the mean over the validation volumes of the 3-D Dice, as `lesionseg evaluate` scores."""
    from lesionseg.evaluation import score_volume
    from lesionseg.labels import Labels

    model_labels = Labels.of("exclusive", [(n, v) for n, v in labels.items() if v])
    per_case = []
    for case in val:
        truth_image = nib.load(data / "labelsTr" / f"{case}.nii.gz")
        truth = np.asarray(truth_image.dataobj).astype(np.uint8)
        pred = np.asarray(nib.load(predictions / f"{case}.nii.gz").dataobj).astype(np.uint8)
        spacing = truth_image.header.get_zooms()[:3]
        scores = score_volume(pred, truth, model_labels, spacing, float(np.prod(spacing)), 2.0)
        per_case.append([s["dice"] if s is not None else np.nan for s in scores])
    means = np.nanmean(np.asarray(per_case, float), axis=0)
    return {s.name: round(float(m), 4) for s, m in zip(model_labels.structures, means)}


def run_ours(data: Path, minutes: float, work: Path) -> dict:
    lesionseg = ROOT / ".venv" / "bin" / "lesionseg"
    run = work / f"lesionseg_{minutes:g}min"
    train = [str(lesionseg), "train", "--data", str(data), "--auto", "--minutes", f"{minutes:g}",
             "--out", str(run)]
    evaluate = [str(lesionseg), "evaluate", "--data", str(data), "--ids", "val_ids.txt", "--weights",
                str(run / "model.pt"), "--out", str(run / "eval_val")]
    start = time.perf_counter()
    for command in (train, evaluate):
        with open(work / f"lesionseg_{minutes:g}min.log", "a") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    metrics = json.loads((run / "eval_val" / "metrics.json").read_text())
    epochs = len((run / "metrics.csv").read_text().splitlines()) - 1
    return {"dice": {k: round(v["dice"], 4) for k, v in metrics["per_class"].items()},
            "epochs": epochs, "wall_seconds": round(time.perf_counter() - start, 1),
            "commands": [" ".join(train), " ".join(evaluate)]}


def run_peer(python: Path, preprocessed: Path, configuration: str, minutes: float, env: dict,
             work: Path, data: Path) -> dict:
    _, val, labels = dataset_cases(data)
    trainer = ROOT / "benchmarks" / "peer_nnunet_trainer.py"
    command = [str(python), str(trainer), str(preprocessed), configuration]
    start = time.perf_counter()
    log = work / f"nnunet_{configuration}_{minutes:g}min.log"
    with open(log, "a") as out:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=out, text=True, check=True,
                              env={**env, "PEER_MINUTES": f"{minutes:g}"})
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary["dice"] = dice_of(Path(summary.pop("predictions")), data, val, labels)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    summary["command"] = f"PEER_MINUTES={minutes:g} " + " ".join(command)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--minutes", type=float, nargs="+", default=[30, 60])
    ap.add_argument("--configs", nargs="+", default=["3d_fullres"], help="nnU-Net configurations")
    ap.add_argument("--peer-venv", type=Path, default=ROOT / ".peer" / "nnunet")
    ap.add_argument("--work", type=Path, help="default runs/peer_nnunet/<dataset>")
    ap.add_argument("--dataset-id", type=int, default=901)
    ap.add_argument("--da-workers", type=int, default=1,
                    help="nnU-Net's augmentation processes (nnUNet_n_proc_DA); they share the same cores")
    ap.add_argument("--skip", nargs="*", default=[], choices=["lesionseg", "nnunet"])
    ap.add_argument("--out", type=Path, help="default benchmarks/results/peer_nnunet_<dataset>.json")
    args = ap.parse_args()
    data = args.data.resolve()
    work = (args.work or ROOT / "runs" / "peer_nnunet" / data.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or ROOT / "benchmarks" / "results" / f"peer_nnunet_{data.name}.json"
    from lesionseg.machine import describe_machine

    payload = json.loads(out.read_text()) if out.is_file() else {}
    payload.update({"machine": describe_machine(), "data": str(args.data), "peer": NNUNET,
                    "peer_trainer": "nnUNetTrainerMinutes (benchmarks/peer_nnunet_trainer.py)",
                    "peer_da_workers": args.da_workers, "scored_by": "lesionseg.evaluation.score_volume, "
                    "per-volume 3-D Dice averaged over the validation list (val_ids.txt)"})
    entries = payload.setdefault("entries", {})

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")

    env = {**os.environ, "nnUNet_raw": str(work / "nnUNet_raw"),
           "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
           "nnUNet_results": str(work / "nnUNet_results"),
           "nnUNet_n_proc_DA": str(args.da_workers), "nnUNet_def_n_proc": str(os.cpu_count() or 1),
           "nnUNet_compile": "f"}
    preprocessed = None
    if "nnunet" not in args.skip:
        python = peer_python(args.peer_venv.resolve())
        preprocessed = peer_dataset(data, work, args.dataset_id, env, python)
    for minutes in args.minutes:
        key = f"lesionseg --auto, {minutes:g} min"
        if "lesionseg" not in args.skip and key not in entries:
            entries[key] = run_ours(data, minutes, work)
            print(key, entries[key]["dice"], flush=True)
            save()
        for configuration in args.configs if preprocessed is not None else []:
            key_peer = f"nnU-Net {configuration}, {minutes:g} min"
            if key_peer in entries:
                continue
            entries[key_peer] = run_peer(python, preprocessed, configuration, minutes, env, work, data)
            print(key_peer, entries[key_peer]["dice"], flush=True)
            save()
        ours = entries.get(key)
        for configuration in args.configs:
            theirs = entries.get(f"nnU-Net {configuration}, {minutes:g} min")
            if ours and theirs:
                payload.setdefault("ours_minus_theirs", {})[f"{configuration}, {minutes:g} min"] = {
                    k: round(ours["dice"][k] - theirs["dice"].get(k, np.nan), 4) for k in ours["dice"]}
    save()


if __name__ == "__main__":
    main()
