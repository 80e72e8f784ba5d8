"""What a refactor must not change, recorded: `predict` with every bundled model on the golden inputs
(photos, TIFFs, a DICOM image, JSRT radiographs, hippocampus NIfTIs and a DICOM series; plain and with TTA
and post-processing) and `evaluate` on photos, radiographs and volumes. Mask PNGs, SEG pixels and label
volumes by hash, metrics and per-case rows by value.

    .venv/bin/python scripts/behaviour_snapshot.py WORK_DIR OUT.json      # after
    PYTHONPATH=OLD_CHECKOUT/src .venv/bin/python scripts/behaviour_snapshot.py WORK_DIR OUT.json   # before
    .venv/bin/python scripts/behaviour_snapshot.py --compare BEFORE.json AFTER.json

Needs ../shared/data (jsrt, hippocampus). Metrics are compared to 1e-6.
"""
import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"


def same(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-6
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
    return x == y


def compare(before: Path, after: Path) -> int:
    a, b = (json.loads(p.read_text()) for p in (before, after))
    work = [str(json.loads(p.read_text()).get("_work", "")) for p in (before, after)]
    a = {k: json.loads(json.dumps(v).replace(work[0], "WORK")) for k, v in a.items() if k != "_exit"}
    b = {k: json.loads(json.dumps(v).replace(work[1], "WORK")) for k, v in b.items() if k != "_exit"}
    differ = [k for k in sorted(set(a) | set(b)) if k not in a or k not in b or not same(a[k], b[k])]
    for k in differ:
        print(f"{k}\n  before: {str(a.get(k))[:200]}\n  after:  {str(b.get(k))[:200]}")
    print(f"{len(set(a) | set(b))} entries, {len(differ)} differ")
    return 1 if differ else 0


if sys.argv[1] == "--compare":
    sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
WORK = Path(sys.argv[1]).resolve()
OUTJSON = Path(sys.argv[2])
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)
LESIONSEG = [sys.executable, "-m", "lesionseg"]  # the code on PYTHONPATH: another checkout's src/ too
SHARED = ROOT.parent / "shared" / "data"
POST = ["--tta", "--largest-component", "--fill-holes", "--min-area", "40", "--threshold", "0.4"]
STRUCTURES = ("heart", "left_lung", "right_lung", "left_clavicle", "right_clavicle")
obs: dict = {"_work": str(WORK)}


def run(*args) -> None:
    done = subprocess.run([*LESIONSEG, *map(str, args)], capture_output=True, text=True)
    obs.setdefault("_exit", {})[" ".join(map(str, args))] = done.returncode
    if done.returncode:
        print("failed:", args, done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def record(tag: str, folder: Path) -> None:
    import nibabel as nib
    import pydicom

    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        key = f"{tag}/{path.relative_to(folder)}".replace("per_image.csv", "per_case.csv")
        if path.name.endswith(("_mask.png", "_labels.png")) or "_mask_" in path.name:
            obs[key] = digest(path.read_bytes())
        elif path.name.endswith((".nii.gz", ".nii")):
            image = nib.load(path)
            voxels, affine = np.asarray(image.dataobj).tobytes(), image.affine.round(5).tobytes()
            obs[key] = f"{digest(voxels)}|{digest(affine)}"
        elif path.name.endswith("_seg.dcm"):
            obs[key] = digest(pydicom.dcmread(path).pixel_array.tobytes())
        elif path.name == "volumes.json":
            obs[key] = json.loads(path.read_text())
        elif path.name == "metrics.json":
            for name, value in json.loads(path.read_text()).items():
                if name not in ("weights", "data") and (isinstance(value, (int, float, str, type(None)))
                                                       or name == "per_class"):
                    obs[f"{key}:{name}"] = value
        elif path.suffix == ".csv" and "manifest" not in path.name:
            obs[key] = list(csv.DictReader(path.open()))


def photos() -> Path:
    import tifffile
    from PIL import Image

    from test_dicom import build_dicom
    from test_golden import SAMPLES

    folder = WORK / "inputs"
    folder.mkdir()
    samples = sorted(SAMPLES.glob("*.jpg"))
    for path in samples:
        shutil.copy(path, folder / path.name)
    rgb = [np.asarray(Image.open(p).convert("RGB")) for p in samples[:3]]
    tifffile.imwrite(folder / "tiff16.tif", rgb[0].astype(np.uint16) * 257, photometric="rgb")
    Image.fromarray(rgb[1]).save(folder / "tiff_lzw.tif", compression="tiff_lzw")
    build_dicom(folder / "photo.dcm", rgb[2], "RGB")
    return folder


def radiographs() -> Path:
    ids = (SHARED / "jsrt" / "val_ids.txt").read_text().split()[:4]
    folder = WORK / "jsrt"
    (folder / "images").mkdir(parents=True)
    for name in STRUCTURES:
        (folder / "masks" / name).mkdir(parents=True)
        for i in ids:
            os.symlink(SHARED / "jsrt" / "masks" / name / f"{i}.gif", folder / "masks" / name / f"{i}.gif")
    for i in ids:
        os.symlink(SHARED / "jsrt" / "images" / f"{i}.png", folder / "images" / f"{i}.png")
    return folder


def volumes() -> Path:
    ids = (SHARED / "hippocampus" / "val_ids.txt").read_text().split()[:5]
    folder = WORK / "hippo"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    shutil.copy(SHARED / "hippocampus" / "dataset.json", folder / "dataset.json")
    for i in ids:
        for sub in ("imagesTr", "labelsTr"):
            os.symlink(SHARED / "hippocampus" / sub / f"{i}.nii.gz", folder / sub / f"{i}.nii.gz")
    return folder


inputs = photos()
for model in ("default", "cpu", "polyp", "chest"):
    for label, options in (("plain", []), ("tta_post", POST)):
        run("predict", inputs, "--out", WORK / f"pred_{model}_{label}", "--weights", model, *options)
        record(f"predict/{model}/{label}", WORK / f"pred_{model}_{label}")
chest = radiographs()
run("predict", chest / "images", "--out", WORK / "pred_chest_jsrt", "--weights", "chest")
record("predict/chest/jsrt", WORK / "pred_chest_jsrt")
run("evaluate", "--data", chest, "--weights", "chest", "--out", WORK / "eval_chest")
record("evaluate/chest", WORK / "eval_chest")
run("evaluate", "--data", chest, "--weights", "chest", "--out", WORK / "eval_chest_px",
    "--pixel-spacing", "0.35", "--tta")
record("evaluate/chest_px", WORK / "eval_chest_px")
from conftest import make_dataset  # noqa: E402

synthetic = make_dataset(WORK / "synth", n=8, size=(72, 96), seed=3)
for model in ("cpu", "polyp"):
    run("evaluate", "--data", synthetic, "--weights", model, "--out", WORK / f"eval_{model}")
    record(f"evaluate/{model}", WORK / f"eval_{model}")
hippo = volumes()
series = SHARED / "hippocampus" / "dicom" / "Study1_13_HCropVolume"
for tag, given, options in (("nifti", hippo / "imagesTr", []), ("dicom", series, []),
                            ("tta", hippo / "imagesTr", ["--tta"])):
    run("predict", given, "--out", WORK / f"pred_hippo_{tag}", "--weights", "hippocampus", *options)
    record(f"predict/hippocampus/{tag}", WORK / f"pred_hippo_{tag}")
run("evaluate", "--data", hippo, "--weights", "hippocampus", "--out", WORK / "eval_hippo")
record("evaluate/hippocampus", WORK / "eval_hippo")
OUTJSON.write_text(json.dumps(obs, indent=1, sort_keys=True, default=str))
print(f"{len(obs)} entries in {OUTJSON}")
