"""HTML reports that open offline: pictures are files beside the page, referenced relatively."""

from __future__ import annotations

import html
from pathlib import Path

from .io import write_text

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1300px}
figure{display:inline-block;margin:.5em;vertical-align:top}
img{max-width:100%;border:1px solid #ccc}figure.card img{width:300px}figcaption{font-size:.85em}
th{text-align:left;padding-right:1.5em}td{padding-right:1.5em}table{border-collapse:collapse;margin:1em 0}"""


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def _table(rows: dict) -> str:
    esc = html.escape
    return (
        "<table>"
        + "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in rows.items())
        + "</table>"
    )


def write_predict_report(path: str | Path, rows: list[dict], label: str, settings: dict) -> None:
    """rows: {"id", "size", "foreground_fraction", "overlay", "mask"} with file names relative to the page;
    `label`: what the model segments (its card's label, else "foreground")."""
    esc = html.escape
    cards = "\n".join(
        f'<figure class="card"><img src="{esc(r["overlay"])}" alt="overlay {esc(r["id"])}"><figcaption>'
        f'<b>{esc(r["id"])}</b> {esc(r["size"])} · {esc(label)} {r["foreground_fraction"]:.1%} · '
        f'<a href="{esc(r["mask"])}">mask</a></figcaption></figure>' for r in rows)
    body = f"<p>{len(rows)} image(s). Red: predicted {esc(label)}.</p>{_table(settings)}<div>{cards}</div>"
    write_text(path, _page("lesionseg predictions", body))


def write_evaluation_report(path: str | Path, metrics: dict, settings: dict, histogram: str,
                            worst: list[tuple[str, float, str]], best: list[tuple[str, float, str]]) -> None:
    """worst/best: (id, jaccard, panel image path relative to the page)."""
    esc = html.escape

    def figures(cases):
        return "\n".join(
            f'<figure><img src="{esc(src)}" alt="{esc(i)}"><figcaption>{esc(i)} · Jaccard {j:.3f}'
            f"</figcaption></figure><br>"
            for i, j, src in cases
        )

    shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()}
    body = (
        f"<h2>Metrics</h2>{_table(shown)}<h2>Per-image Jaccard</h2>"
        f'<img src="{esc(histogram)}" alt="histogram of per-image Jaccard">'
        f"<h2>Settings</h2>{_table(settings)}"
        f"<h2>The {len(worst)} worst cases</h2>{figures(worst)}<h2>The {len(best)} best "
        f"cases</h2>{figures(best)}"
    )
    write_text(path, _page("lesionseg evaluation", body))


def write_structures_report(path: str | Path, metrics: dict, settings: dict,
                            worst: dict[str, list[tuple[str, float, str]]]) -> None:
    """A model of several structures: the per-structure table, then each structure's worst cases
    (id, Dice, picture of truth | prediction relative to the page)."""
    esc = html.escape
    unit = metrics["distance_unit"]
    head = ["structure", "Dice", "Jaccard", f"HD95 ({unit})", f"ASSD ({unit})",
            f"NSD ({metrics['nsd_tolerance']} {unit})", "scored", "both empty", "worst case"]
    rows = [*metrics["per_class"].items(),
            ("mean", {m[5:]: v for m, v in metrics.items() if m.startswith("mean_")})]
    table = "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(
        f"<tr><th>{esc(name)}</th>" + "".join(f"<td>{v[m]:.4f}</td>" for m in ("dice", "jaccard"))
        + "".join(f"<td>{v[m]:.2f}</td>" for m in ("hd95", "assd")) + f"<td>{v['nsd']:.4f}</td>"
        + "".join(f"<td>{v.get(k, '')}</td>" for k in ("n_scored", "n_both_empty", "n_worst_case")) + "</tr>"
        for name, v in rows) + "</table>"
    cases = "".join(
        f"<h3>{esc(name)}</h3>" + "".join(
            f'<figure><img src="{esc(src)}" alt="{esc(i)}"><figcaption>{esc(i)} · Dice {d:.3f} '
            f"(left: truth, right: prediction)</figcaption></figure>" for i, d, src in shown)
        for name, shown in worst.items())
    notes = {k: metrics[k] for k in ("label_mode", "pixel_spacing_source", "hd_rules", "n_images")}
    body = (f"<h2>Per structure</h2>{table}{_table(notes)}<h2>Settings</h2>{_table(settings)}"
            f"<h2>Worst cases per structure</h2>{cases}")
    write_text(path, _page("lesionseg evaluation", body))


def write_volumes_report(path: str | Path, records: list[dict], settings: dict) -> None:
    """Segmented volumes: each one's views (orthogonal planes and a slice montage) and structure volumes."""
    esc = html.escape
    parts = []
    for r in records:
        rows = {name: f"{v['ml']:.3f} mL ({v['mm3']:.0f} mm³, {v['voxels']} voxels)"
                for name, v in r["structures"].items()}
        spacing = " x ".join(f"{s:g}" for s in r["spacing_mm"])
        rows["grid"] = f"{'x'.join(map(str, r['shape']))} voxels of {spacing} mm"
        views = next((f for f in r["files"] if f.endswith("_views.png")), None)
        picture = f'<img src="{esc(views)}" alt="views of {esc(r["id"])}">' if views else ""
        links = " · ".join(f'<a href="{esc(f)}">{esc(f)}</a>' for f in r["files"] if not f.endswith(".png"))
        parts.append(f"<h2>{esc(r['id'])}</h2>{_table(rows)}<p>{links}</p>{picture}")
    body = f"<p>{len(records)} volume(s).</p>{_table(settings)}" + "".join(parts)
    write_text(path, _page("lesionseg volumes", body))


def print_metrics(metrics: dict) -> None:
    """`evaluate`'s metrics as a table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    if "per_class" in metrics:
        _print_structures(metrics)
    else:
        table = Table(title=f"{metrics['n_images']} images")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in metrics.items():
            if key not in ("n_images", "clicks"):
                table.add_row(key, f"{value:.4f}")
        Console().print(table)
    if "clicks" in metrics:
        _print_clicks(metrics["clicks"])


def _print_clicks(clicks: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    n = clicks["max_clicks"]
    tables = [("case", clicks["per_structure"])]
    if "per_slice" in clicks:  # a slice model's volumes, also scored slice by slice
        tables = [("volume", clicks["per_structure"]), ("slice", clicks["per_slice"])]
    for case, per_structure in tables:
        table = Table(title=f"simulated clicks, up to {n} per {case}: Dice after k clicks "
                            "(0: the model alone)")
        for column in ("structure", f"{case}s", *(f"k={k}" for k in range(n + 1)), "NoC@85", "NoC@90"):
            table.add_column(column, justify="left" if column == "structure" else "right")
        for name, v in per_structure.items():
            table.add_row(name, str(v["n"]), *(f"{d:.4f}" for d in v["dice_after_clicks"]),
                          f"{v['noc85']:.2f}", f"{v['noc90']:.2f}")
        Console().print(table)


def _print_structures(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    unit = metrics["distance_unit"]
    counted = f"{metrics['n_volumes']} volumes" if "n_volumes" in metrics else f"{metrics['n_images']} images"
    table = Table(title=f"{counted}, {metrics['label_mode']} structures; distances in "
                        f"{unit} ({metrics['pixel_spacing_source']}); NSD at {metrics['nsd_tolerance']} "
                        f"{unit}")
    for column in ("structure", "Dice", "Jaccard", f"HD95 {unit}", f"ASSD {unit}", "NSD", "scored",
                   "both empty", "worst case"):
        table.add_column(column, justify="left" if column == "structure" else "right")
    means = {m[5:]: v for m, v in metrics.items() if m.startswith("mean_")}
    for name, v in [*metrics["per_class"].items(), ("mean", means)]:
        table.add_row(name, *(f"{v[m]:.4f}" for m in ("dice", "jaccard")),
                      *(f"{v[m]:.2f}" for m in ("hd95", "assd")), f"{v['nsd']:.4f}",
                      *(str(v.get(k, "")) for k in ("n_scored", "n_both_empty", "n_worst_case")))
    console = Console()
    console.width = max(console.width, 120)  # piped output is 80 columns: names would be cut
    console.print(table)
