"""Wall-clock minutes until validation mean Jaccard (on the split carved from train) first reaches
0.75 / 0.80 / 0.85, from a run's metrics.csv; optionally trains that run first.

    .venv/bin/python benchmarks/time_to_accuracy.py --run runs/tta --train [--config configs/cpu_fast.yaml]
    .venv/bin/python benchmarks/time_to_accuracy.py --run runs/bundled          # an existing run

Writes RUN/time_to_accuracy.json and docs/time_to_accuracy.png. Minutes are the run's own wall clock
(`elapsed_min`, which includes validation and survives resumption).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (0.75, 0.80, 0.85)


def minutes_to(rows: list[dict], target: float) -> float | None:
    for r in rows:
        if r.get("val_mean_jaccard") and float(r["val_mean_jaccard"]) >= target:
            return float(r["elapsed_min"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--train", action="store_true", help="train (or resume) the run first")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "cpu_fast.yaml")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017" / "train")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "time_to_accuracy.png")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.train:
        cmd = [sys.executable, "-m", "lesionseg.cli", "train", "--data", str(args.data), "--config",
               str(args.config), "--out", str(args.run), *args.overrides]
        subprocess.run(cmd, check=True)
    from lesionseg.run_dir import RunDir
    from lesionseg.viz import _pyplot, _save

    rows = RunDir(args.run).metrics()
    result = {"run": str(args.run), "epochs": len(rows),
              "minutes_to": {f"{t:.2f}": minutes_to(rows, t) for t in TARGETS},
              "best_val_mean_jaccard": max(float(r["val_mean_jaccard"]) for r in rows),
              "total_minutes": float(rows[-1]["elapsed_min"])}
    (args.run / "time_to_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot([float(r["elapsed_min"]) for r in rows], [float(r["val_mean_jaccard"]) for r in rows], marker="o")
    for t in TARGETS:
        ax.axhline(t, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall-clock minutes (2 CPU cores)")
    ax.set_ylabel("val mean Jaccard (carved split)")
    ax.set_title(f"time to accuracy: {args.run.name}")
    ax.grid(alpha=0.3)
    _save(fig, args.png)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
