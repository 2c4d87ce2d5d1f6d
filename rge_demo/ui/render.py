"""HTML snippets for results: ranked hits with thumbnails, the moves strip, the rationale's note,
sampled rationales and a rationale shaded by attribution. Presentation only."""

from __future__ import annotations

import base64
import html
from functools import lru_cache
from pathlib import Path

from rge_demo.analysis.attribution import Attribution
from rge_demo.analysis.compare import Comparison, Move, RationaleNote, Side

STYLE = """
<style>
.rge-hits {width:100%; border-collapse:collapse; font-size:14px}
.rge-hits td {padding:3px 6px; border-bottom:1px solid #e5e7eb; vertical-align:middle}
.rge-hits tr.target td {background:#dcfce7}
.rge-thumb {width:48px; height:48px; image-rendering:pixelated; border:1px solid #d1d5db}
.rge-badge {display:inline-block; padding:1px 6px; border-radius:8px; font-size:12px; margin:1px}
.rge-up, .rge-entered {background:#dcfce7} .rge-down, .rge-left {background:#fee2e2} .rge-same {background:#f3f4f6}
.rge-rank {font-weight:600; margin:4px 0}
.rge-tie {display:inline-block; padding:0 5px; border-radius:6px; font-size:11px; background:#fef3c7; color:#92400e;
  margin-left:4px}
.rge-offtop {display:flex; align-items:center; gap:8px; border-top:2px dashed #9ca3af; margin-top:2px;
  padding:4px 6px; background:#dcfce7; font-size:14px}
.rge-offtop .rge-offrank {font-weight:600; min-width:2.5em} .rge-offtop .rge-offscore {margin-left:auto}
.rge-note {border-left:4px solid #f59e0b; background:#fffbeb; padding:4px 8px; margin:4px 0; font-size:13px}
.rge-note.rge-halluc {border-color:#dc2626; background:#fef2f2}
.rge-note.rge-clean {border-color:#16a34a; background:#f0fdf4}
.rge-unchanged {color:#6b7280; font-size:12px}
.rge-samples {width:100%; border-collapse:collapse; font-size:13px}
.rge-samples td, .rge-samples th {padding:2px 6px; border-bottom:1px solid #e5e7eb; text-align:left; vertical-align:top}
.rge-samples tr.rge-right td {background:#f0fdf4}
.rge-att {line-height:1.9; font-size:15px; margin:4px 0 8px}
.rge-att span.rge-part {border-radius:4px; padding:1px 2px}
.rge-att-key span {display:inline-block; padding:0 6px; border-radius:4px; font-size:12px; margin-right:6px}
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


def score_cell(score: float, tied: bool) -> str:
    tie = '<span class="rge-tie" title="equal to another item at 3 decimals">tie</span>' if tied else ""
    return f"{score:+.3f}{tie}"


def hits_html(side: Side | None, root: Path, target_id: str | None, title: str, note: str = "") -> str:
    """One mode's top-k: shown ranks (``=2`` for a tie), the right answer's rank of N, and the right
    answer in an extra row below the table when it lies outside the top-k. ``note``: HTML above it."""
    if side is None:
        return f"{STYLE}<p><b>{html.escape(title)}</b>: waiting...</p>{note}"
    rows = []
    places = side.places or [None] * len(side.hits)
    for h, place in zip(side.hits, places):
        cls = ' class="target"' if target_id and h.item.id == target_id else ""
        mark = " &#10003; right answer" if cls else ""
        rank = place.label if place else str(h.rank)
        tied = bool(place and place.tied)
        rows.append(f"<tr{cls}><td>{rank}</td><td>{_item_cell(h.item, root)}{mark}</td>"
                    f"<td>{score_cell(h.score, tied)}</td></tr>")
    rank = ""
    if side.target is not None:
        rank = f'<div class="rge-rank">{html.escape(side.rank_line())}</div>'
    elif side.target_rank is not None:
        rank = f'<div class="rge-rank">right answer at rank {side.target_rank} of {side.n_items}</div>'
    extra = ""
    if side.target_outside and side.target is not None:
        t, hit = side.target, side.target_hit
        where = ("tied with a shown item, not in the list above" if t.rank <= len(side.hits)
                 else f"outside the top {len(side.hits)}")
        extra = (f'<div class="rge-offtop">'
                 f'<span class="rge-offrank">{t.label}</span><span>{_item_cell(hit.item, root)} &#10003; right answer '
                 f'<small>({where})</small></span>'
                 f'<span class="rge-offscore">{score_cell(t.score, t.tied)}</span></div>')
    return (f"{STYLE}<p><b>{html.escape(title)}</b></p>{note}{rank}"
            f'<table class="rge-hits"><tr><th>#</th><th>candidate</th><th>cosine</th></tr>{"".join(rows)}</table>'
            f"{extra}")


def _move_names(moves: list[Move]) -> list[str]:
    """Each move's label, with its task (``two (count)``) where two shown items share a label."""
    counts: dict[str, int] = {}
    for m in moves:
        counts[m.label] = counts.get(m.label, 0) + 1
    return [f"{m.label} ({m.item_id.split('/')[0]})" if counts[m.label] > 1 and "/" in m.item_id else m.label
            for m in moves]


def moves_html(moves: list[Move]) -> str:
    """One badge per item that moved between the two top-k lists; the unchanged ones in one line."""
    if not moves:
        return ""
    badges, same = [], []
    for m, name in zip(moves, _move_names(moves)):
        title = html.escape(f"{m.item_id}: direct rank {m.direct_rank} -> reasoning rank {m.reason_rank}")
        if m.change == "same":
            same.append(f'<span class="rge-badge rge-same" title="{title}">{html.escape(name)} '
                        f"({m.reason_rank})</span>")
            continue
        kind = m.change.split()[0]
        badges.append(f'<span class="rge-badge rge-{kind}" title="{title}">{html.escape(name)}: '
                      f"{html.escape(m.change)}</span>")
    moved = " ".join(badges) if badges else "nothing: both lists hold the same items at the same ranks"
    unchanged = f'<div class="rge-unchanged">unchanged (rank): {" ".join(same)}</div>' if same else ""
    return f"{STYLE}<p><b>What moved</b> (direct &rarr; reasoning): {moved}</p>{unchanged}"


def note_html(note: RationaleNote | None) -> str:
    """The rationale's note (hallucination flag, empty or cut-off rationale) as boxes; "" when nothing to say."""
    if note is None:
        return ""
    out = []
    for sentence in note.sentences:
        cls = "rge-note rge-halluc" if sentence.startswith("Possible hallucination") else "rge-note"
        out.append(f'<div class="{cls}">{html.escape(sentence)}</div>')
    if note.hallucinations == [] and not note.empty:
        out.append('<div class="rge-note rge-clean">Hallucination check: every colour and shape the rationale '
                   "names is in the scene.</div>")
    return "".join(out)


def comparison_html(c: Comparison, root: Path, target_id: str | None,
                    note: RationaleNote | None = None) -> tuple[str, str, str]:
    """(direct column, reasoning column, moves strip); ``note`` goes on top of the reasoning column."""
    reason_title = "Reasoning" if c.done else "Reasoning (writing the rationale...)"
    return (hits_html(c.direct, root, target_id, "Direct (no reasoning)"),
            hits_html(c.reason if c.done else None, root, target_id, reason_title, note_html(note)),
            moves_html(c.moves))


# ------------------------------------------------------------------------------ sampling
def samples_html(view) -> str:
    """Summary and one row per sample of a :class:`rge_demo.app.compare_views.SampleView`."""
    s, n_items = view.result, view.n_items
    spread = "-" if s.spread is None else f"{s.spread:.3f}"
    passes = ", ".join(f"pass@{k} {v:.2f}" for k, v in s.pass_at.items())
    summary = (f"<p><b>{len(s.samples)} samples</b> at temperature {s.temperature:g} (seed {s.seed}) of "
               f"<b>{html.escape(view.model)}</b>: {s.correct} of {len(s.samples)} rank the right answer "
               f"(<b>{html.escape(view.target_label)}</b>) first. Spread (mean pairwise cosine): <b>{spread}</b>. "
               f"{passes}. Centroid: rank {s.centroid.rank} of {n_items}; direct: rank {s.direct.rank}; "
               f"greedy: rank {s.greedy.rank}.</p>")
    rows = []
    for i, p in enumerate(s.samples, 1):
        said = html.escape(p.answer) if p.answer else "<i>none</i>"
        verdict = "" if p.answer is None else (" &#10003;" if p.answer == view.target_label else " &#10007;")
        cut = " <small>(cut off)</small>" if p.forced else ""
        cls = ' class="rge-right"' if p.rank == 1 else ""
        rows.append(f"<tr{cls}><td>{i}</td><td>{said}{verdict}</td><td>{p.rank} of {n_items}</td>"
                    f"<td>{p.cosine:+.3f}</td><td>{html.escape(p.rationale) or '<i>(empty)</i>'}{cut}</td></tr>")
    for name, p in (("direct", s.direct), ("greedy", s.greedy), ("centroid", s.centroid)):
        rows.append(f"<tr><td><i>{name}</i></td><td>{html.escape(p.answer or '') if name == 'greedy' else ''}</td>"
                    f"<td>{p.rank} of {n_items}</td><td>{p.cosine:+.3f}</td>"
                    f"<td>{html.escape(p.rationale) if name == 'greedy' else ''}</td></tr>")
    return (f"{STYLE}{summary}<table class=\"rge-samples\"><tr><th>#</th><th>stated answer</th>"
            f"<th>right answer's rank</th><th>cosine to it</th><th>rationale</th></tr>{''.join(rows)}</table>")


# ------------------------------------------------------------------------------ attribution
def _shade(delta: float, scale: float) -> str:
    """Green for a part that pulls the embedding towards the right answer, red for one that pushes it away."""
    alpha = 0.12 + 0.6 * min(abs(delta) / scale, 1.0) if scale > 0 else 0.12
    rgb = "22,163,74" if delta >= 0 else "220,38,38"
    return f"rgba({rgb},{alpha:.2f})"


def _shaded(att: Attribution, level: str) -> str:
    parts = att.parts(level)
    scale = max((abs(p.delta_right) for p in parts), default=0.0)
    out, pos = [], 0
    for p in parts:
        out.append(html.escape(att.rationale[pos:p.start]))
        wrong = "" if p.delta_wrong is None else f"; towards the top wrong one {p.delta_wrong:+.4f}"
        title = f"leaving it out changes the cosine to the right answer by {-p.delta_right:+.4f}"
        out.append(f'<span class="rge-part" style="background:{_shade(p.delta_right, scale)}" '
                   f'title="contribution to the right answer {p.delta_right:+.4f}{wrong} ({title})">'
                   f"{html.escape(p.text)}</span>")
        pos = p.end
    out.append(html.escape(att.rationale[pos:]))
    return "".join(out)


def attribution_html(att: Attribution) -> str:
    """A rationale shaded by each part's contribution (sentences, then clauses), with the numbers.

    Needs only the :class:`Attribution` (the Compare tab and the Failures case view both call it):
    contribution = cos(full rationale) - cos(rationale without the part), to the right answer (shade)
    and to the top-1 wrong candidate (in the table)."""
    right = html.escape(att.right_label or f"candidate {att.right}")
    wrong = html.escape(att.wrong_label or f"candidate {att.wrong}") if att.wrong is not None else None
    head = (f"<p>Cosine of the full rationale's embedding to the right answer <b>{right}</b>: "
            f"{att.cos_right:+.3f}" + (f"; to the top wrong candidate <b>{wrong}</b>: {att.cos_wrong:+.3f}"
                                       if wrong else "") + f". {att.rows} variants embedded in one batched forward.</p>")
    key = ('<div class="rge-att-key"><span style="background:rgba(22,163,74,0.5)">pulls towards the right answer</span>'
           '<span style="background:rgba(220,38,38,0.5)">pushes away from it</span>'
           "<small>shade: how much the cosine drops (or rises) when the part is left out</small></div>")
    blocks = []
    for level in ("sentence", "clause"):
        parts = att.parts(level)
        if not parts:
            continue
        rows = "".join(
            f"<tr><td>{html.escape(p.text)}</td><td>{p.delta_right:+.4f}</td>"
            f"<td>{'' if p.delta_wrong is None else f'{p.delta_wrong:+.4f}'}</td></tr>" for p in parts)
        wrong_head = f"<th>contribution to the cosine with {wrong}</th>" if wrong else "<th></th>"
        blocks.append(f"<p><b>By {level}</b></p><div class=\"rge-att\">{_shaded(att, level)}</div>"
                      f"<table class=\"rge-samples\"><tr><th>{level}</th>"
                      f"<th>contribution to the cosine with {right}</th>{wrong_head}</tr>"
                      f"{rows}</table>")
    if not blocks:
        return f"{STYLE}{head}<p>The rationale has no parts to leave out.</p>"
    return f"{STYLE}<div class=\"rge-attribution\">{head}{key}{''.join(blocks)}</div>"
