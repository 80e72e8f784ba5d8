"""Load on `lesionseg serve --weights hippocampus` with volumes over loopback: answers, latency and memory.

    .venv/bin/python benchmarks/serve_volume_load.py [--clients 16] [--rounds 3] [--bombs 50]

Starts a real server process on a free 127.0.0.1 port. Then:
- load: --clients concurrent clients each send --rounds volumes, alternating a NIfTI (.nii.gz) and the same
  volume as a zipped DICOM series; every answer's status is counted (the target: each is 200 or 503), with
  p50 / p99 latency of the 200s, and the server's RSS before, at its peak during (sampled every 0.1 s) and
  after (2 s idle). Every 200 for the NIfTI is checked against `lesionseg predict`'s label map.
- bombs: --bombs gzip bombs sent one after another (a small valid header followed by 1.1 GB of zeros: over
  the default 1 GiB cap as it inflates) and as many 600³ headers (413 from the header), with the RSS
  after them against the baseline.
The volume is the first hippocampus image of ../shared/data when present, else a synthetic one of the same
shape. JSON to benchmarks/results/serve_volume_load.json, with the CPU flags it ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from lesionseg.machine import describe_machine  # noqa: E402
from serve_load import Connection, Server, rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "hippocampus"


def the_volume(folder: Path) -> tuple[Path, bytes, bytes]:
    """(NIfTI path, its bytes, the same volume as a zipped DICOM series)."""
    from test_volumes import make_series

    found = sorted(HIPPOCAMPUS.rglob("*.nii.gz")) if HIPPOCAMPUS.is_dir() else []
    images = [p for p in found if "label" not in str(p)]
    if images:
        image = nib.load(str(images[0]))
        array, affine = np.asarray(image.dataobj).astype(np.int16), image.affine
    else:
        rng = np.random.default_rng(0)
        array, affine = (rng.normal(300, 60, (35, 51, 35))).astype(np.int16), np.diag([1.0, 1, 1, 1])
    nifti = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(nifti))
    series = make_series(folder / "series", array)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(series.iterdir()):
            z.write(f, f.name)
    return nifti, nifti.read_bytes(), buf.getvalue()


def gzip_bomb(unpacked: int) -> bytes:
    """A valid 4³ NIfTI followed by zeros, `unpacked` bytes in all once inflated (~1 MB compressed)."""
    head = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)).to_bytes()
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros, out, left = b"\0" * (16 << 20), [deflate.compress(head)], unpacked - len(head)
    while left > 0:
        out.append(deflate.compress(zeros[: min(left, len(zeros))]))
        left -= len(zeros)
    return b"".join(out + [deflate.flush()])


def huge_header() -> bytes:
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    image.header.set_data_shape((600, 600, 600))
    return gzip.compress(image.header.binaryblock + b"\0" * 4096)


class Sampler:
    """The server's RSS every 0.1 s while running; its peak."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


async def send_all(url: str, bodies: list[tuple[str, bytes]], clients: int, rounds: int) -> dict:
    host, port = url.split("//")[1].split(":")
    statuses: dict[int, int] = {}
    latencies, answers = [], {}

    async def client(k: int):
        conn = Connection(host, int(port))
        try:
            for r in range(rounds):
                name, body = bodies[(k + r) % len(bodies)]
                t = time.perf_counter()
                try:
                    status, content = await conn.post("/v1/segment?format=nifti", body,
                                                      "application/octet-stream")
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status, content = -1, b""
                    conn.close()
                    conn = Connection(host, int(port))
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - t)
                    answers.setdefault(name, content)
        finally:
            conn.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    lat = np.array(latencies) * 1000
    return {"statuses": {str(k): v for k, v in sorted(statuses.items())},
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) if len(lat) else None for q in (50, 99)},
            "_answers": answers}


async def send_each(url: str, body: bytes, n: int) -> dict[str, int]:
    host, port = url.split("//")[1].split(":")
    statuses: dict[str, int] = {}
    conn = Connection(host, int(port))
    try:
        for _ in range(n):
            status, _ = await conn.post("/v1/segment", body, "application/gzip")
            statuses[str(status)] = statuses.get(str(status), 0) + 1
    finally:
        conn.close()
    return statuses


def predicted_labels(nifti: Path, folder: Path) -> np.ndarray:
    import subprocess

    out = folder / "pred"
    subprocess.run([sys.executable, "-m", "lesionseg", "predict", str(nifti), "--weights", "hippocampus",
                    "--out", str(out)], check=True, capture_output=True)
    return np.asarray(nib.load(str(out / "scan_labels.nii.gz")).dataobj)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bombs", type=int, default=50)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_volume_load.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        nifti, nifti_body, zip_body = the_volume(Path(tmp))
        expected = predicted_labels(nifti, Path(tmp))
        bomb, header = gzip_bomb((1 << 30) + (100 << 20)), huge_header()
        server = Server("hippocampus", 1, ["--max-queue", str(args.max_queue)])
        try:
            asyncio.run(send_all(server.url, [("nifti", nifti_body)], 1, 1))  # warm-up
            time.sleep(1)
            baseline = rss_mb(server.proc.pid)
            with Sampler(server.proc.pid) as during:
                load = asyncio.run(send_all(server.url, [("nifti", nifti_body), ("series", zip_body)],
                                            args.clients, args.rounds))
            time.sleep(2)
            after_load = rss_mb(server.proc.pid)
            with Sampler(server.proc.pid) as bombing:
                bombs = asyncio.run(send_each(server.url, bomb, args.bombs))
                headers = asyncio.run(send_each(server.url, header, args.bombs))
            time.sleep(2)
            after_bombs = rss_mb(server.proc.pid)
        finally:
            server.stop()
    answers = load.pop("_answers")
    served = answers.get("nifti")
    same = served is not None and np.array_equal(
        np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(served)).dataobj), expected)
    other = {k: v for k, v in load["statuses"].items() if k not in ("200", "503")}
    result = {
        "machine": describe_machine(with_torch=False),
        "volume": f"{'x'.join(map(str, expected.shape))} hippocampus MRI, as .nii.gz ({len(nifti_body):,} B) "
                  f"and as a zipped DICOM series ({len(zip_body):,} B)",
        "load": {"clients": args.clients, "requests": args.clients * args.rounds, **load,
                 "answers_other_than_200_or_503": sum(other.values()),
                 "nifti_answer_equals_predict": bool(same),
                 "rss_mb": {"before": round(baseline, 1), "peak_during": round(during.peak, 1),
                            "after": round(after_load, 1)}},
        "bombs": {"gzip_bombs": args.bombs, "bomb_unpacked_bytes": (1 << 30) + (100 << 20),
                  "bomb_statuses": bombs, "header_600_cubed_statuses": headers,
                  "rss_mb": {"before": round(baseline, 1), "peak_during": round(bombing.peak, 1),
                             "after": round(after_bombs, 1)},
                  "rss_after_minus_before_mb": round(after_bombs - baseline, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
