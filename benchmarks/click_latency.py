"""Latency of a click through the service, end to end: a real `lesionseg serve` process on 127.0.0.1, a
session opened per image (POST /v1/sessions), then a simulated user's clicks (clicks.next_click on the mask
the service answered, against the image's truth), each timed from the request sent to the corrected mask
decoded. Also the Dice after each click, which must agree with `lesionseg evaluate --clicks`.

    .venv/bin/python benchmarks/click_latency.py --weights runs/lite0_192_polyp_clicks_cpu/model.pt \
        --data ../shared/data/kvasir_seg/val --mask-threshold 127 --cases 20 --clicks 5

JSON (machine and CPU flags, p50 / p95 / max per click, opening a session, Dice after each click) to
benchmarks/results/click_latency_<data>.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lesionseg.clicks import clicks_to_reach, next_click  # noqa: E402
from lesionseg.evaluation import load_labelled  # noqa: E402
from lesionseg.machine import describe_machine  # noqa: E402
from lesionseg.metrics import overlap_scores  # noqa: E402
from serve_load import Server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mask_of(state: dict) -> np.ndarray:
    (encoded,) = state["masks"].values()
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded)))) > 127


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--mask-threshold", type=int)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    labelled = load_labelled(args.data, args.mask_threshold)
    server = Server(args.weights, 1, [])
    opening, per_click, curves = [], [], []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for i in range(min(args.cases, len(labelled.pairs))):
                path = labelled.pairs[i].image_path
                truth = labelled.load(i)[1].astype(bool)
                t = time.perf_counter()
                answer = client.post("/v1/sessions", files={"file": (path.name, path.read_bytes())})
                answer.raise_for_status()
                state = answer.json()
                mask = mask_of(state)
                opening.append(time.perf_counter() - t)
                placed, dice = [], [overlap_scores(mask, truth)["dice"]]
                for _ in range(args.clicks):
                    click = next_click(mask, truth, placed)
                    if click is None:
                        dice.append(dice[-1])
                        continue
                    placed.append(click)
                    t = time.perf_counter()
                    answer = client.post(f"/v1/sessions/{state['session']}/click",
                                         json={"row": click.position[0], "col": click.position[1],
                                               "positive": click.positive})
                    answer.raise_for_status()
                    mask = mask_of(answer.json())
                    per_click.append(time.perf_counter() - t)
                    dice.append(overlap_scores(mask, truth)["dice"])
                curves.append(dice)
                client.delete(f"/v1/sessions/{state['session']}")
    finally:
        server.stop()
    ms = np.asarray(per_click) * 1000

    def stats(values) -> dict:
        return {"p50_ms": round(float(np.percentile(values, 50)), 1),
                "p95_ms": round(float(np.percentile(values, 95)), 1),
                "max_ms": round(float(np.max(values)), 1)}

    payload = {"machine": describe_machine(), "weights": args.weights, "data": str(args.data),
               "cases": len(curves), "clicks_per_case": args.clicks, "clicks_timed": len(per_click),
               "per_click": stats(ms), "open_session": stats(np.asarray(opening) * 1000),
               "dice_after_clicks": [round(float(v), 4) for v in np.mean(curves, axis=0)],
               "noc85": round(float(np.mean([clicks_to_reach(c, 0.85, args.clicks) for c in curves])), 3),
               "noc90": round(float(np.mean([clicks_to_reach(c, 0.90, args.clicks) for c in curves])), 3),
               "command": " ".join(sys.argv)}
    out = args.out or ROOT / "benchmarks" / "results" / f"click_latency_{args.data.parent.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps({k: payload[k] for k in ("per_click", "open_session", "dice_after_clicks", "noc90")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
