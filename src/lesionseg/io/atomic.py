"""Atomic writes, in one place: every result file appears whole under its name or not at all (a temporary
file in the same folder, renamed into place)."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
from pathlib import Path
from typing import Iterator


@functools.cache
def _umask() -> int:
    """The process's umask (reading it means setting it: done once, on the first write, not at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any written file
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_together(files: dict[Path, bytes]) -> None:
    """Every file of one case, or none: each is written to a temporary file first (where a full disk
    fails), and only then are all renamed into place. A failure raises UserError naming the file and
    leaves none of them behind."""
    from ..errors import UserError

    for path in files:
        if path.is_dir():
            raise UserError(f"{path}: a folder is in the way of this result; nothing of this case written")
    temporaries: dict[Path, Path] = {}
    placed: list[Path] = []
    path = next(iter(files), Path())
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            temporaries[path] = Path(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
        for path, tmp in temporaries.items():
            os.replace(tmp, path)
            placed.append(path)
    except OSError as exc:
        for done in placed:
            done.unlink(missing_ok=True)
        why = exc.strerror or exc
        raise UserError(f"{path}: cannot write ({why}); nothing of this case written") from None
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)


def write_csv(path: str | Path, fieldnames: list[str], rows: list[dict]) -> None:
    """A CSV with a header row, written atomically like every other result file."""
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


