"""Latency of a click through the service, end to end: a real `lesionseg serve` process on 127.0.0.1, a
session opened per image (POST /v1/sessions), then a simulated user's clicks (clicks.next_click on the mask
the service answered, against the image's truth), each timed from the request sent to the corrected mask
decoded. Also the Dice after each click, which must agree with `lesionseg evaluate --clicks`.

Volumes (a slice model of volumes, a labelled volume folder): a session per volume, and per structure the
user clicks on the slice that shows most of it (in the model's slice order), each click answered with that
slice's corrected masks after the volume's labels are recomputed; the Dice is that slice's.

    .venv/bin/python benchmarks/click_latency.py --weights runs/lite0_192_polyp_clicks_cpu/model.pt \
        --data ../shared/data/kvasir_seg/val --mask-threshold 127 --cases 20 --clicks 5
    .venv/bin/python benchmarks/click_latency.py --weights runs/lite0_96_hippocampus_clicks_cpu/model.pt \
        --data ../shared/data/hippocampus --ids val_ids.txt --cases 20 --clicks 5

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


def mask_of(state: dict, structure: str | None = None) -> np.ndarray:
    encoded = state["masks"][structure] if structure else next(iter(state["masks"].values()))
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded)))) > 127


def user_clicks(client, state: dict, truth: np.ndarray, clicks: int, on: dict) -> tuple[list, list]:
    """A simulated user's clicks on one slice (`on`: the slice and structure, empty for a photo): (seconds per
    click, Dice after 0..clicks)."""
    structure = on.get("structure")
    mask = mask_of(state, structure)
    placed, dice, seconds = [], [overlap_scores(mask, truth)["dice"]], []
    for _ in range(clicks):
        click = next_click(mask, truth, placed)
        if click is None:
            dice.append(dice[-1])
            continue
        placed.append(click)
        t = time.perf_counter()
        answer = client.post(f"/v1/sessions/{state['session']}/click",
                             json={"row": click.position[0], "col": click.position[1],
                                   "positive": click.positive, **on})
        answer.raise_for_status()
        mask = mask_of(answer.json(), structure)
        seconds.append(time.perf_counter() - t)
        dice.append(overlap_scores(mask, truth)["dice"])
    return seconds, dice


def slices_to_click(seg, labelled, i: int) -> list[tuple[dict, np.ndarray]]:
    """Per structure a volume holds: (the slice showing most of it and the structure's name, its truth on
    that slice), in the model's slice order (`seg`: the model's Segmenter)."""
    from lesionseg.inference.volume_coverage import volume_coverage

    volume, truth = labelled.load(i)
    coverage = volume_coverage(seg, volume)
    stacked = coverage.to_stack(truth)
    out = []
    for structure in seg.labels.structures:
        held = stacked == structure.value
        if held.any():
            s = int(held.reshape(len(held), -1).sum(1).argmax())
            out.append(({"slice": s, "structure": structure.name}, held[s]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--mask-threshold", type=int)
    ap.add_argument("--ids", help="the ids to use (a file of one per line, e.g. a dataset's val_ids.txt)")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    labelled = load_labelled(args.data, args.mask_threshold, args.ids)
    volumes = labelled.pairs[0].image_path.name.endswith((".nii", ".nii.gz"))
    if volumes:
        from lesionseg.inference import Segmenter

        local = Segmenter.load(args.weights)  # to find each volume's slices in the model's order
    server = Server(args.weights, 1, [])
    opening, per_click, curves = [], [], []
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for i in range(min(args.cases, len(labelled.pairs))):
                path = labelled.pairs[i].image_path
                targets = slices_to_click(local, labelled, i) if volumes else \
                    [({}, labelled.load(i)[1].astype(bool))]
                t = time.perf_counter()
                answer = client.post("/v1/sessions", files={"file": (path.name, path.read_bytes())})
                answer.raise_for_status()
                opening.append(time.perf_counter() - t)
                key = answer.json()["session"]
                for on, truth in targets:
                    state = client.get(f"/v1/sessions/{key}", params={"slice": on["slice"]}).json() if on \
                        else answer.json()
                    seconds, dice = user_clicks(client, state, truth, args.clicks, on)
                    per_click += seconds
                    curves.append(dice)
                client.delete(f"/v1/sessions/{key}")
    finally:
        server.stop()
    ms = np.asarray(per_click) * 1000

    def stats(values) -> dict:
        return {"p50_ms": round(float(np.percentile(values, 50)), 1),
                "p95_ms": round(float(np.percentile(values, 95)), 1),
                "max_ms": round(float(np.max(values)), 1)}

    payload = {"machine": describe_machine(), "weights": args.weights, "data": str(args.data),
               "dice": "of the clicked slice" if volumes else "of the image",
               "cases": len(curves), "clicks_per_case": args.clicks, "clicks_timed": len(per_click),
               "per_click": stats(ms), "open_session": stats(np.asarray(opening) * 1000),
               "dice_after_clicks": [round(float(v), 4) for v in np.mean(curves, axis=0)],
               "noc85": round(float(np.mean([clicks_to_reach(c, 0.85, args.clicks) for c in curves])), 3),
               "noc90": round(float(np.mean([clicks_to_reach(c, 0.90, args.clicks) for c in curves])), 3),
               "command": " ".join(sys.argv)}
    name = args.data.name if volumes else args.data.parent.name
    out = args.out or ROOT / "benchmarks" / "results" / f"click_latency_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps({k: payload[k] for k in ("per_click", "open_session", "dice_after_clicks", "noc90")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
