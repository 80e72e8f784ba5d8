"""scripts/gpu_train.py (the lent-GPU training loop), exercised on the CPU with synthetic data."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_train  # noqa: E402

from lesionseg.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from lesionseg.models import load_model  # noqa: E402


def disks(n=16, size=64, seed=0):
    """Bright ellipses on a dark background; the mask is exactly the bright region."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = []
    for _ in range(n):
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=g)
        masks.append(((yy - cy) ** 2 + ((xx - cx) * 1.7) ** 2 < (size // 5) ** 2).to(torch.uint8))
    y = torch.stack(masks)[:, None]
    return (y * 200 + 20).repeat(1, 3, 1, 1).to(torch.uint8), y


def test_augment_moves_image_and_mask_together():
    x, y = disks()
    for seed in range(3):
        xa, ya = gpu_train.augment(x, y, gen=torch.Generator().manual_seed(seed))
        assert xa.shape == (16, 3, 64, 64) and ya.shape == (16, 1, 64, 64)
        assert set(ya.unique().tolist()) <= {0.0, 1.0}
        # undo the ImageNet normalisation: values back in [0, 1]
        raw = xa * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
        bright = raw.mean(1, keepdim=True) > 0.45
        truth = ya > 0
        keep = truth.flatten(1).any(1)  # crops that still hold some lesion
        inter = (bright & truth).flatten(1).sum(1)[keep].float()
        union = (bright | truth).flatten(1).sum(1)[keep].float()
        assert (inter / union).median() > 0.85  # a mask shifted or flipped apart from its image scores ~0


def test_augment_is_reproducible_with_a_generator():
    x, y = disks(4)
    a = gpu_train.augment(x, y, gen=torch.Generator().manual_seed(7))
    b = gpu_train.augment(x, y, gen=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_gpu_train_runs_on_cpu_and_writes_a_lesionseg_model(tmp_path):
    data = make_dataset(tmp_path / "data", n=20, size=(40, 48))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_train.py"), "--data", str(data), "--out", str(out),
         "--minutes", "0.02", "--image-size", "32", "--batch-size", "4", "--device", "cpu",
         "--report-data", str(data), "model.base_width=2", "model.depth=2", "model.deep_supervision=true"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["deep_supervision"] is True and summary["epochs"] >= 1
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == summary["epochs"]
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)  # same columns as `lesionseg train`
    assert max(float(r["val_mean_jaccard"]) for r in rows) == pytest.approx(summary["carved_mean_jaccard"], abs=1e-4)
    assert 0.0 <= summary["report"]["mean_jaccard_at_input_size"] <= 1.0
    loaded = load_model(out / "model.pt")
    assert loaded.image_size == 32 and loaded.config.base_width == 2
    assert "research use" in loaded.card["licence"]
