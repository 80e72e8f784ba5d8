"""Load on `lesionseg serve` over loopback: N concurrent clients for a bounded time, per setting.

    .venv/bin/python benchmarks/serve_load.py [--models cpu default] [--workers 1 2] [--concurrency 16]
                                              [--seconds 20] [--backends torch onnx]

For each (model, backend, workers): starts a real `lesionseg serve` process on a free 127.0.0.1 port, sends
ISIC-sized (256²) JPEG uploads from --concurrency clients as fast as they are answered for --seconds, checks
every mask against `lesionseg predict`'s for the same image (once per distinct image), and reports
requests/s, p50/p95/p99 latency and errors. Memory: the server's RSS after 100, 2,000 and more requests
(--memory-requests) on the first setting. JSON to benchmarks/results/serve_load.json, a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from lesionseg.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "lesionseg" / "assets" / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), in MB."""
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                     text=True).stdout.split()]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


class Server:
    def __init__(self, weights: str, workers: int, extra: list[str]):
        self.port = free_port()
        # the server's log goes to a file: a pipe nobody reads fills up and blocks the server
        self.log = tempfile.NamedTemporaryFile("w+", prefix="lesionseg-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lesionseg", "serve", "--weights", weights, "--port", str(self.port),
             "--workers", str(workers), *extra], stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            time.sleep(0.3)
        raise RuntimeError("server not ready after 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares the 2 cores with the server, and
    httpx costs ~3x more CPU per request than this."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.reader, self.writer = host, port, None, None

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                      if k.lower() == "content-length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, bodies: list[bytes], concurrency: int, seconds: float | None = None,
               requests: int | None = None) -> dict:
    host, port = url.split("//")[1].split(":")
    latencies, errors, masks = [], 0, {}
    stop_at = time.perf_counter() + seconds if seconds else None
    counter = iter(range(10**9))

    async def client():
        nonlocal errors
        conn = Connection(host, int(port))
        try:
            while True:
                i = next(counter)
                if (requests is not None and i >= requests) or (stop_at and time.perf_counter() >= stop_at):
                    return
                t = time.perf_counter()
                try:
                    status, content = await conn.post("/v1/segment", bodies[i % len(bodies)], "image/jpeg")
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    conn.close()
                    conn = Connection(host, int(port))
                    continue
                latencies.append(time.perf_counter() - t)
                if status != 200:
                    errors += 1
                else:
                    masks.setdefault(i % len(bodies), content)
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) if len(lat) else None for q in (50, 95, 99)},
        "_masks": masks,
    }


def predict_masks(weights: str, files: list[Path]) -> list[bytes]:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "lesionseg", "predict", *map(str, files), "--out", out,
                        "--weights", weights], check=True, capture_output=True)
        return [(Path(out) / f"{f.stem}_mask.png").read_bytes() for f in files]


def export_onnx(name: str, folder: Path) -> str:
    path = folder / f"{name}.onnx"
    subprocess.run([sys.executable, "-m", "lesionseg", "export", "--weights", name, "--out", str(path)],
                   check=True, capture_output=True)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["cpu", "default"])
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--memory-requests", nargs="*", type=int, default=[2000, 6000, 10000],
                    help="server RSS after 100 requests and after each of these totals (none: skip)")
    ap.add_argument("--max-batch", nargs="+", type=int, default=[16],
                    help="`serve --max-batch` settings to try")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = ap.parse_args()
    files = sorted(SAMPLES.glob("*.jpg"))
    bodies = [f.read_bytes() for f in files]
    rows, memory = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            expected = predict_masks(model, files)
            for backend in args.backends:
                weights = model if backend == "torch" else export_onnx(model, Path(tmp))
                for workers, max_batch in [(w, b) for w in args.workers for b in args.max_batch]:
                    server = Server(weights, workers, ["--max-batch", str(max_batch)])
                    try:
                        asyncio.run(load(server.url, bodies, 2, requests=8))  # warm-up
                        if memory is None and args.memory_requests:
                            memory = {"setting": f"{model}/{backend}/workers {workers}/max batch {max_batch}"}
                            done = 0
                            for mark in sorted({100, 2000, *args.memory_requests}):
                                asyncio.run(load(server.url, bodies, args.concurrency, requests=mark - done))
                                done = mark
                                memory[f"rss_mb_after_{mark}"] = round(rss_mb(server.proc.pid), 1)
                        result = asyncio.run(load(server.url, bodies, args.concurrency, seconds=args.seconds))
                    finally:
                        server.stop()
                    got = result.pop("_masks")
                    wrong = sum(got[i] != expected[i] for i in got)
                    rows.append(
                        {"model": model, "backend": backend, "workers": workers, "max_batch": max_batch,
                         "concurrency": args.concurrency, **result, "masks_differing_from_predict": wrong}
                    )
                    print(json.dumps(rows[-1]), flush=True)
    machine = describe_machine(with_torch=False)
    result = {"machine": machine, "image": "ISIC 2017 samples, 256x256 JPEG", "rows": rows, "memory": memory}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| model | backend | workers | max batch | requests/s | p50 ms | p95 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['backend']} | {r['workers']} | {r['max_batch']} | {r['requests_per_s']} | "
            f"{r['p50_ms']} | "
            f"{r['p95_ms']} | {r['p99_ms']} | {r['errors']} |"
        )
    print(f"memory: {memory}")


if __name__ == "__main__":
    main()
