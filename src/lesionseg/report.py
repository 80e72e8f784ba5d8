"""A small HTML report that opens offline: pictures are files beside it, referenced relatively."""

from __future__ import annotations

import html
from pathlib import Path

from .io import write_text


def write_predict_report(path: str | Path, rows: list[dict], settings: dict) -> None:
    """rows: {"id", "source", "size", "lesion_fraction", "overlay", "mask"} with file names relative to path."""
    esc = html.escape
    cards = "\n".join(
        f'<figure><img src="{esc(r["overlay"])}" alt="overlay {esc(r["id"])}"><figcaption><b>{esc(r["id"])}</b> '
        f'{esc(r["size"])} · lesion {r["lesion_fraction"]:.1%} · <a href="{esc(r["mask"])}">mask</a></figcaption>'
        f'</figure>' for r in rows)
    settings_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in settings.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lesionseg predictions</title>
<style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:.5em;width:300px}}
img{{width:300px;height:auto;border:1px solid #ccc}}figcaption{{font-size:.85em}}th{{text-align:left;padding-right:1em}}</style>
</head><body>
<h1>lesionseg predictions</h1>
<p>{len(rows)} image(s). Red: predicted lesion.</p>
<table>{settings_rows}</table>
<div>{cards}</div>
</body></html>
"""
    write_text(path, page)
