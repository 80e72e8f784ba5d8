"""Render a throughput JSON (benchmarks/throughput.py) as the markdown table used in docs/performance.md.

    .venv/bin/python benchmarks/to_markdown.py benchmarks/results/NAME.json
"""

import json
import sys


def main(path: str) -> None:
    r = json.load(open(path))
    m, p = r["machine"], r["peaks_gflops"]
    print(
        f"Machine: {m['cores']} cores / {m['threads']} torch threads, {m['cpu']}, torch {m['torch']}, native "
        "bf16: "
        f"{m['native_bf16']}. Measured peaks: "
        + ", ".join(f"{k} {v:.0f}" for k, v in p.items())
        + f". Input {r['size']}², batch {r['batch']}.\n"
    )
    print("| model | params | runtime | mode | train img/s | infer img/s | train GFLOP/img | train GFLOP/s | "
          "train % of peak | infer GFLOP/s | infer % of peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in r["rows"]:
        def f(key, fmt="{:.2f}", scale=1):
            return fmt.format(row[key] * scale) if key in row else "—"

        print(
            f"| {row['model']} | {row['params'] / 1e6:.2f} M | {row['runtime']} | {row['mode']} | "
            f"{f('train_img_s')} | "
            f"{f('infer_img_s')} | {f('train_gflop_per_img', '{:.1f}')} | {f('train_gflops', '{:.1f}')} | "
            f"{f('train_fraction_of_peak', '{:.0f}%', 100)} | {f('infer_gflops', '{:.1f}')} | "
            f"{f('infer_fraction_of_peak', '{:.0f}%', 100)} |"
        )
    print("\nRatios: " + ", ".join(f"`{k}` = {v:.2f}" for k, v in r["ratios"].items()))
    for note in r.get("notes", []):
        print(f"\nNote: {note}")


if __name__ == "__main__":
    main(sys.argv[1])
