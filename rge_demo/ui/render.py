"""HTML snippets for results: ranked hits with thumbnails, the moves strip. Presentation only."""

from __future__ import annotations

import base64
import html
from functools import lru_cache
from pathlib import Path

from rge_demo.analysis.compare import Comparison, Move, Side

STYLE = """
<style>
.rge-hits {width:100%; border-collapse:collapse; font-size:14px}
.rge-hits td {padding:3px 6px; border-bottom:1px solid #e5e7eb; vertical-align:middle}
.rge-hits tr.target td {background:#dcfce7}
.rge-thumb {width:48px; height:48px; image-rendering:pixelated; border:1px solid #d1d5db}
.rge-badge {display:inline-block; padding:1px 6px; border-radius:8px; font-size:12px; margin:1px}
.rge-up, .rge-entered {background:#dcfce7} .rge-down, .rge-left {background:#fee2e2} .rge-same {background:#f3f4f6}
.rge-rank {font-weight:600; margin:4px 0}
</style>
"""


@lru_cache(maxsize=4096)
def thumbnail(path: str) -> str:
    """A data URI for a small image file (gallery PNGs are a few KB)."""
    data = Path(path).read_bytes()
    mime = "image/png" if path.lower().endswith(".png") else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _item_cell(item, root: Path) -> str:
    parts = []
    if item.image:
        parts.append(f'<img class="rge-thumb" src="{thumbnail(str(root / item.image))}" alt="{html.escape(item.label)}">')
    text = item.text or item.label
    if text:
        parts.append(html.escape(text))
    if "/" in item.id:  # mixed galleries repeat labels across tasks ("two" in count and chart_diff)
        parts.append(f'<small style="color:#6b7280">{html.escape(item.id.split("/")[0])}</small>')
    return " ".join(parts)


def hits_html(side: Side | None, root: Path, target_id: str | None, title: str) -> str:
    if side is None:
        return f"{STYLE}<p><b>{html.escape(title)}</b>: waiting...</p>"
    rows = []
    for h in side.hits:
        cls = ' class="target"' if target_id and h.item.id == target_id else ""
        mark = " &#10003; right answer" if cls else ""
        rows.append(f"<tr{cls}><td>{h.rank}</td><td>{_item_cell(h.item, root)}{mark}</td><td>{h.score:+.3f}</td></tr>")
    rank = ""
    if side.target_rank is not None:
        rank = f'<div class="rge-rank">right answer at rank {side.target_rank}</div>'
    return (f"{STYLE}<p><b>{html.escape(title)}</b></p>{rank}"
            f'<table class="rge-hits"><tr><th>#</th><th>candidate</th><th>cosine</th></tr>{"".join(rows)}</table>')


def moves_html(moves: list[Move]) -> str:
    if not moves:
        return ""
    badges = []
    for m in moves:
        kind = m.change.split()[0]
        badges.append(f'<span class="rge-badge rge-{kind}" title="direct rank {m.direct_rank} -> reasoning rank '
                      f'{m.reason_rank}">{html.escape(m.label)}: {html.escape(m.change)}</span>')
    return f"{STYLE}<p><b>What moved</b> (direct &rarr; reasoning): {' '.join(badges)}</p>"


def comparison_html(c: Comparison, root: Path, target_id: str | None) -> tuple[str, str, str]:
    """(direct column, reasoning column, moves strip)."""
    reason_title = "Reasoning" if c.done else "Reasoning (writing the rationale...)"
    return (hits_html(c.direct, root, target_id, "Direct (no reasoning)"),
            hits_html(c.reason if c.done else None, root, target_id, reason_title),
            moves_html(c.moves))
