"""A labelled CT set of small structures, synthesised: the case where a plan for 2-D slices once shipped a
model that segments nothing (seven organs of about 0.01–0.03 % of the voxels each, thick slices).

Each case: a 128×128×N head-and-neck-like volume in Hounsfield units (air, a body of soft tissue with fat,
a bone ring and a spine), N slices of 2.5–5 mm (in-plane 2.5 mm), with seven small soft-tissue structures at
low contrast (5–60 HU against their surroundings) whose place, size and shape vary by case: left and right
parotid glands, left and right submandibular glands, the brainstem, the spinal cord, and the chiasm. Noise
(σ 20 HU) and a slight blur, as a CT reconstruction has. The MSD layout (`imagesTr/`, `labelsTr/`,
`dataset.json` with modality CT) and a held-out list (`val_ids.txt`, a fifth of the cases, seeded).

    .venv/bin/python scripts/synthetic_ct.py OUT [--cases 42] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

STRUCTURES = ("parotid_L", "parotid_R", "submandibular_L", "submandibular_R", "brainstem", "spinal_cord",
              "chiasm")
SIDE = 128
IN_PLANE_MM = 2.5


def _ellipsoid(grid, centre, radii_mm) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii_mm)) <= 1.0


def synthetic_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(HU image int16, labels uint8, spacing mm) of one case; axes x (R→L), y (A→P), z (I→S)."""
    slice_mm = float(rng.choice([2.5, 3.0, 4.0, 5.0]))
    depth = int(round(SIDE * IN_PLANE_MM / slice_mm))
    spacing = (IN_PLANE_MM, IN_PLANE_MM, slice_mm)
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip((SIDE, SIDE, depth), spacing)], indexing="ij")
    x, y, z = grid
    centre = np.array([SIDE * IN_PLANE_MM / 2, SIDE * IN_PLANE_MM / 2, depth * slice_mm / 2])
    centre += rng.normal(0, 6, 3)
    scale = rng.uniform(0.9, 1.1)
    image = np.full(x.shape, -1000.0)
    body = ((x - centre[0]) / (70 * scale)) ** 2 + ((y - centre[1]) / (85 * scale)) ** 2 <= 1
    image[body] = -90  # fat
    inner = ((x - centre[0]) / (62 * scale)) ** 2 + ((y - centre[1]) / (76 * scale)) ** 2 <= 1
    image[inner] = 35  # muscle and soft tissue
    def oval(rx: float, ry: float) -> np.ndarray:
        return ((x - centre[0]) / (rx * scale)) ** 2 + ((y - centre[1] + 10) / (ry * scale)) ** 2 <= 1

    ring = inner & ~oval(50, 58) & oval(56, 64) & (z > centre[2])
    image[ring] = 700  # skull above the skull base
    spine = np.hypot(x - centre[0], y - (centre[1] + 30 * scale)) <= 14 * scale
    image[spine & (z < centre[2])] = 500
    labels = np.zeros(x.shape, np.uint8)

    def place(value: int, offset_mm, radii_mm, hu: float) -> None:
        jitter = rng.normal(0, 3, 3)
        radii = np.asarray(radii_mm) * rng.uniform(0.8, 1.2, 3) * scale
        mask = _ellipsoid(grid, centre + np.asarray(offset_mm) + jitter, radii)
        image[mask] = hu + rng.normal(0, 4)
        labels[mask] = value

    for sign, (parotid, submandibular) in ((1, (1, 3)), (-1, (2, 4))):  # the patient's left is +x
        place(parotid, (sign * 45, 5, -5), (9, 13, 14), 5.0)
        place(submandibular, (sign * 30, -30, -40), (9, 10, 10), 60.0)
    place(5, (0, 20, 20), (11, 11, 16), 30.0)  # brainstem, against the soft tissue around it
    cord = np.hypot(x - centre[0], y - (centre[1] + 30 * scale)) <= 6 * scale  # inside the spine
    cord &= (z < centre[2] - 5) & (z > centre[2] - 45)
    image[cord] = 40.0
    labels[cord] = 6
    place(7, (0, -10, 45), (12, 7, 6), 45.0)  # chiasm: thin, a slice or two at 5 mm
    image = ndimage.gaussian_filter(image, (0.7, 0.7, 0.5)) + rng.normal(0, 20, image.shape)
    return np.clip(image, -1024, 3071).astype(np.int16), labels, spacing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", type=int, default=42)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for sub in ("imagesTr", "labelsTr"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    ids, shares = [], []
    for i in range(args.cases):
        image, labels, spacing = synthetic_case(rng)
        case = f"hn_{i:03d}"
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # voxels in LPS order, as CT is stored
        nib.save(nib.Nifti1Image(image, affine), args.out / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), args.out / "labelsTr" / f"{case}.nii.gz")
        ids.append(case)
        shares.append([float((labels == v).mean()) for v in range(1, len(STRUCTURES) + 1)])
    val = sorted(rng.choice(ids, size=max(1, len(ids) // 5), replace=False).tolist())
    (args.out / "val_ids.txt").write_text("\n".join(val) + "\n")
    (args.out / "dataset.json").write_text(json.dumps({
        "name": "synthetic head-and-neck CT", "description": __doc__.splitlines()[0], "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(v): n for v, n in enumerate(STRUCTURES, 1)}},
        "numTraining": len(ids),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids],
    }, indent=1))
    share = np.asarray(shares).mean(0) * 100
    print(f"{len(ids)} cases in {args.out} ({len(val)} held out in val_ids.txt); mean share of the voxels: "
          + ", ".join(f"{n} {s:.3f}%" for n, s in zip(STRUCTURES, share)))


if __name__ == "__main__":
    main()
