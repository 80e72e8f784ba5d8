"""Which inputs a `predict` run takes, for images and volumes alike: this machine's shard of them (a
stable hash of the id, the same on every machine), those whose results are not in --out yet
(--skip-existing), and a refusal to overwrite results without --overwrite."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"K/N" (1 ≤ K ≤ N) → (K, N)."""
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected K/N, e.g. 3/8") from None
    if not 1 <= k <= n:
        raise UserError(f"--shard {text!r}: need 1 ≤ K ≤ N")
    return k, n


def shard_of(image_id: str, n: int) -> int:
    """1..n for an id: a stable hash, the same on every machine and whatever else is in the folder."""
    return int(hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:12], 16) % n + 1


@dataclass
class Selection:
    """The input policy's answer: what to segment, what is already done, and the shard taken."""

    files: list[Path]
    skipped: list[Path]
    part: tuple[int, int] | None

    def summary(self, segmented: int, noun: str, out: Path, seconds: float, made: int, unit: str) -> str:
        """The run's last line: how many of the chosen inputs were segmented, the shard, the rate (`made`
        `unit`s: the images or volumes written), and how many were already done."""
        shard = f" (shard {self.part[0]}/{self.part[1]})" if self.part else ""
        return (f"segmented {segmented} of {len(self.files)} {noun}{shard} into {out} in {seconds:.1f} s "
                f"({made / max(seconds, 1e-9):.1f} {unit}/s)"
                + (f"; {len(self.skipped)} already done" if self.skipped else ""))


@dataclass(frozen=True)
class ResultNames:
    """How one kind of input's results are named in --out: an input's id, the id a result file belongs to
    (None: not a result), and whether an input's results are there (for --skip-existing)."""

    input_id: Callable[[Path], str]
    result_id: Callable[[str], str | None]
    done: Callable[[Path, str], bool]


def select_inputs(files: list[Path], out: Path, shard: str | None, skip_existing: bool, overwrite: bool,
                  names: ResultNames) -> Selection:
    """Of the listed inputs, `--shard K/N`'s part and those `--skip-existing` leaves; results already in
    `out` are refused without --overwrite. `names`: how this kind of input's results are named."""
    part = parse_shard(shard)
    if part is not None:
        files = [f for f in files if shard_of(names.input_id(f), part[1]) == part[0]]
    done_ids = {names.result_id(n) for n in (p.name for p in out.iterdir())} if out.is_dir() else set()
    skipped = ([f for f in files if names.input_id(f) in done_ids and names.done(out, names.input_id(f))]
               if skip_existing else [])
    files = [f for f in files if f not in set(skipped)]
    if not overwrite and not skip_existing:
        taken = sorted(names.input_id(f) for f in files if names.input_id(f) in done_ids)
        if taken:
            more = " and more" if len(taken) > 1 else ""
            raise UserError(f"{out}: already holds results ({taken[0]}{more}); "
                            "pass --overwrite to replace them or --skip-existing to resume")
    return Selection(files, skipped, part)
