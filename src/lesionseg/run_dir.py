"""The run directory of `lesionseg train`, read and written in one place (training, `plot`, scripts):

    RUN/config.yaml                         the fully resolved config (the run's identity)
    RUN/metrics.csv                         one row per epoch (METRICS_FIELDS)
    RUN/checkpoints/last.ckpt, best.ckpt    Lightning checkpoints
    RUN/model.pt                            the best model so far, self-contained
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .config import Config, dump_config, load_config
from .errors import UserError
from .io import write_text

METRICS_FIELDS = ["epoch", "train_loss", "val_loss", "val_mean_jaccard", "val_dice", "lr", "train_img_per_s",
                  "train_images", "val_mean_jaccard_raw", "elapsed_min"]


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> Config:
        return load_config(self.config_path)

    def write_config(self, cfg: Config) -> None:
        write_text(self.config_path, dump_config(cfg))

    def metrics_text_rows(self) -> list[dict[str, str]]:
        """metrics.csv as written (strings), for rewriting it unchanged; [] when there is none."""
        if not self.metrics_path.is_file():
            return []
        with self.metrics_path.open(newline="") as f:
            return list(csv.DictReader(f))

    def last_score(self) -> float | None:
        """The last epoch's validation mean Jaccard in metrics.csv (None without one)."""
        rows = self.metrics_text_rows()
        return float(rows[-1]["val_mean_jaccard"]) if rows and rows[-1].get("val_mean_jaccard") else None

    def metrics(self) -> list[dict[str, float | int | None]]:
        """One dict per epoch: `epoch` an int, the other columns floats, None where a column is empty
        (e.g. `val_mean_jaccard_raw` without an EMA). A run without metrics.csv is a UserError."""
        if not self.metrics_path.is_file():
            raise UserError(f"{self.path}: no metrics.csv here (is it a lesionseg run directory?)")
        def value(key: str, text: str | None):
            if text in ("", None):
                return None
            return int(text) if key == "epoch" else float(text)

        return [{k: value(k, v) for k, v in r.items()} for r in self.metrics_text_rows()]

    def write_metrics(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics_path, buf.getvalue())

    def append_metrics(self, row: dict) -> None:
        with self.metrics_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=METRICS_FIELDS).writerow(row)
