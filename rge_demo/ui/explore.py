"""Explore tab: a large WebGL map of a gallery's items and queries in both modes, linked to a grid.

A click or a lasso selects points; the grid shows them (and a click in the grid rings the point on
the map); colour and size follow any field without re-projecting; search filters by text.
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr
import numpy as np
import plotly

from rge_demo.analysis.compare import shown_ranks
from rge_demo.analysis.failures import shorten
from rge_demo.analysis.projection import umap_state
from rge_demo.app import explore as X
from rge_demo.app.demo import Demo

from .common import friendly, gpu, md_literal
from .render import STYLE, score_cell, thumbnail
from .train import session_of

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"  # served, not fetched: works offline
MAP_JS = (Path(__file__).with_name("explore_map.js")).read_text(encoding="utf-8")
MAP_HTML = '<div class="rge-map"><div class="rge-map-plot"></div><div class="rge-map-rings"></div>' \
           '<div class="rge-map-key"></div><div class="rge-map-tip"></div></div>'  # constant: gradio never re-renders the plot
MAP_CSS = """
.rge-map {position: relative}
.rge-map-plot {width: 100%; min-height: 640px}
.rge-map-rings {position: absolute; left: 0; top: 0; pointer-events: none}
.rge-ring {position: absolute; width: 18px; height: 18px; margin: -11px 0 0 -11px; border: 3px solid #111;
           border-radius: 50%}
.rge-map-key {font-size: 13px; line-height: 1.9; max-height: 84px; overflow-y: auto; padding: 2px 4px}
.rge-key-item {display: inline-block; margin-right: 12px; white-space: nowrap}
.rge-key-dot {display: inline-block; width: 11px; height: 11px; border-radius: 6px; margin-right: 4px;
              vertical-align: -1px; border: 1px solid #0003}
.rge-map-tip {position: absolute; display: none; z-index: 20; pointer-events: none; background: #fff;
              border: 1px solid #9ca3af; border-radius: 6px; padding: 6px; max-width: 260px; font-size: 12px;
              box-shadow: 0 2px 8px #0002}
.rge-map-tip img {width: 96px; height: 96px; image-rendering: pixelated; display: block; margin-bottom: 4px}
"""
GRID_JS = """
element.addEventListener('click', e => {
  const cell = e.target.closest('[data-point]');
  if (!cell) return;
  const i = Number(cell.dataset.point);
  window.dispatchEvent(new CustomEvent('rge-map-show', {detail: [i]}));
  trigger('click', {index: i});
});
"""
GRID_CSS = """
.rge-grid {display: grid; grid-template-columns: repeat(auto-fill, minmax(118px, 1fr)); gap: 8px;
           max-height: 520px; overflow-y: auto; font-size: 12px}
.rge-cell {border: 1px solid #d1d5db; border-radius: 6px; padding: 4px; cursor: pointer; background: #fff}
.rge-cell:hover {border-color: #2563eb}
.rge-cell img {width: 100%; aspect-ratio: 1; image-rendering: pixelated; display: block}
.rge-cell .right {color: #15803d} .rge-cell .wrong {color: #b91c1c}
"""


def _grid_html(cells: list[dict], total: int) -> str:
    if not cells:
        return "<p>Click a point, or draw a lasso or a box on the map, to see the points here.</p>"
    out = []
    for c in cells:
        img = f'<img src="{thumbnail(c["image"])}" alt="">' if c["image"] else ""
        outcome = "" if c["outcome"] == "-" else \
            f'<span class="{c["outcome"]}">{c["outcome"]}</span> (rank {c["rank"]})'
        flag = " &#9888; hallucinates" if c["hallucinations"] else ""
        out.append(f'<div class="rge-cell" data-point="{c["point"]}" title="{html.escape(c["text"] or c["label"])}">'
                   f'{img}<b>{html.escape(c["label"])}</b><br>{html.escape(c["kind"])}<br>{outcome}{flag}</div>')
    more = f"<p>showing {len(cells)} of {total}</p>" if total > len(cells) else ""
    return f'<div class="rge-grid">{"".join(out)}</div>{more}'


def _point_html(point, neighbours) -> str:
    img = f'<img class="rge-thumb" style="width:96px;height:96px" src="{thumbnail(point.image)}">' if point.image else ""
    lines = [f"<b>{html.escape(X.KIND_NAMES[point.kind])}</b> <code>{html.escape(point.id)}</code>",
             html.escape(point.text or ""), f"label / right answer: <b>{html.escape(point.label)}</b>"]
    if point.correct is not None:
        lines.append(f"right answer at rank {point.rank} ({'first' if point.correct else 'not first'}); "
                     f"reasoning moved it {point.rank_change:+d}")
    if point.rationale:
        lines.append(f"rationale ({point.tokens} tokens): <i>{html.escape(point.rationale)}</i>")
    if point.hallucinations:
        lines.append(f"&#9888; names what the scene lacks: {html.escape(', '.join(point.hallucinations))}")
    # ranked as Compare ranks: equal at the 3 decimals shown is a tie ("=3"), marked as one
    ranks, tied = shown_ranks(np.array([s for _, s in neighbours], dtype=np.float64))
    rows = "".join(
        f"<tr><td>{'=' if t else ''}{r}</td><td>"
        f"{'<img class=rge-thumb src=' + thumbnail(p.image) + '>' if p.image else ''} "
        f"{html.escape(p.label)}</td><td>{score_cell(s, t)}</td></tr>"
        for (p, s), r, t in zip(neighbours, ranks, tied))
    return (f"{STYLE}<div>{img}<br>{'<br>'.join(lines)}</div><p><b>Nearest gallery items</b> (full space)</p>"
            f'<table class="rge-hits"><tr><th>#</th><th>item</th><th>cosine</th></tr>{rows}</table>')


def map_component(payloads: X.Payloads, **kwargs) -> gr.HTML:
    """The WebGL map: its data and style travel as tokens the page exchanges once for the payloads."""
    gr.set_static_paths([PLOTLY_JS])

    def map_data(token):
        return payloads.get(token)

    def map_style(token):
        return payloads.get(token)

    return gr.HTML(None, html_template=MAP_HTML, css_template=MAP_CSS, js_on_load=MAP_JS,
                   head=f'<script src="/gradio_api/file={PLOTLY_JS}"></script>', elem_id="explore-map",
                   server_functions=[map_data, map_style], style=None, selected=[], **kwargs)


def map_update(payloads: X.Payloads, proj: X.Projection | None, colour_by: str, size_by: str) -> gr.HTML:
    """A new map: its data and style as tokens."""
    return gr.HTML({"token": payloads.put(X.payload(proj)), "n": len(proj.points)},
                   style={"token": payloads.put(X.style(proj, colour_by, size_by))}, selected=[])


def style_update(payloads: X.Payloads, proj: X.Projection, colour_by: str, size_by: str) -> gr.HTML:
    return gr.HTML(style={"token": payloads.put(X.style(proj, colour_by, size_by))})


def build(demo: Demo, model_state: gr.State, session: gr.BrowserState | None = None):
    """Lay out the tab; returns the page-load step that lists the session's own galleries."""
    session = session if session is not None else gr.State(None)
    galleries = sorted(demo.galleries)
    with gr.Row():
        gallery = gr.Dropdown(galleries, value=galleries[0] if galleries else None, label="Gallery")
        method = gr.Radio(["umap", "pca"], value="umap", label="Projection")
        go_btn = gr.Button("Project", variant="primary")
    with gr.Row():
        colour = gr.Dropdown(list(X.COLOUR_FIELDS), value="label", label="Colour by")
        size = gr.Dropdown(list(X.SIZE_FIELDS), value="none", label="Size by")
        find = gr.Textbox(label="Search labels, texts and rationales", placeholder="e.g. square", submit_btn=True)
    status = gr.Markdown("Choose a gallery and press **Project**.", elem_id="explore-status")
    with gr.Row():
        with gr.Column(scale=3):
            plot = map_component(demo.map_payloads)
        with gr.Column(scale=1, min_width=320):
            detail = gr.HTML("<p>The point you click: its details and nearest gallery items.</p>",
                             elem_id="explore-detail")
    grid = gr.HTML(_grid_html([], 0), css_template=GRID_CSS, js_on_load=GRID_JS, elem_id="explore-grid")
    state = gr.State(None)

    @gpu
    @friendly
    def on_project(gallery, method, colour_by, size_by, model_name, session_key, request: gr.Request,
                   progress=gr.Progress()):
        """A shared 2-D map of a gallery's items and queries, coloured and sized by a field: (map, note)."""
        progress(0.2, desc="embedding the gallery's queries in both modes")
        X.style(None, colour_by, size_by)  # a bad field is refused before any work
        proj = demo.projection(gallery, model_name, method, session_of(session_key, request))
        note = f"Method: **{proj.result.method.upper()}**, {len(proj.points)} points. Click a point or draw a lasso."
        if method == "umap" and proj.result.method != "umap":
            note += f" (UMAP is {umap_state()}; PCA shown meanwhile - press Project again in a few seconds)"
        return map_update(demo.map_payloads, proj, colour_by, size_by), note, proj, _grid_html([], 0), ""

    @friendly
    def on_style(proj, colour_by, size_by):
        """Colour and size by another field: the map restyles, the projection stays."""
        if proj is None:
            return gr.HTML(), "Press **Project** first."
        return style_update(demo.map_payloads, proj, colour_by, size_by), \
            f"Colour by **{colour_by}**, size by **{size_by}**."

    @friendly
    def show(proj, indices, note=""):
        indices = X.check_points(proj, indices)
        first = _point_html(proj.points[indices[0]], demo.neighbours(proj, indices[0])) if len(indices) == 1 else ""
        text = note or f"{len(indices)} point{'s' * (len(indices) != 1)} selected."
        return _grid_html(X.grid(proj, indices), len(indices)), first, text

    def on_select(proj, evt: gr.SelectData):
        if proj is None:
            return gr.HTML(), gr.HTML(), "Press **Project** first."
        return show(proj, evt.index if isinstance(evt.index, list) else [evt.index])

    def on_cell(proj, evt: gr.EventData):
        i = getattr(evt, "index", None)
        if proj is None or i is None:
            return gr.HTML(), ""
        return _point_html(proj.points[int(i)], demo.neighbours(proj, int(i))), gr.HTML(selected=[int(i)])

    @friendly
    def on_find(proj, text):
        """Points whose label, text or rationale contains the text: ringed on the map, shown in the grid."""
        if proj is None:
            return gr.HTML(), gr.HTML(), "Press **Project** first.", gr.HTML()
        if not (text or "").strip():  # an emptied search clears the rings and the grid
            return _grid_html([], 0), "", "Search cleared: type words to ring the points that hold them.", \
                gr.HTML(selected=[])
        hits = X.search(proj, text)
        cells, first, _ = show(proj, hits) if hits else (_grid_html([], 0), "", "")
        shown = shorten(text, 80)  # a pasted page is not echoed whole
        return cells, first, f"{len(hits)} point{'s' * (len(hits) != 1)} match {md_literal(shown)}.", \
            gr.HTML(selected=hits)

    private = {"api_visibility": "private"}
    # A failed request marks only the note line with gradio's error badge; the map and grid stay usable.
    go_btn.click(on_project, [gallery, method, colour, size, model_state, session],
                 [plot, status, state, grid, detail], api_name="project", concurrency_id="model",
                 show_progress_on=status)
    for field in (colour, size):
        field.change(on_style, [state, colour, size], [plot, status], show_progress_on=status, **private)
    plot.select(on_select, state, [grid, detail, status], show_progress_on=status, **private)
    grid.click(on_cell, state, [detail, plot], show_progress_on=status, **private)
    find.submit(on_find, [state, find], [grid, detail, status, plot], show_progress_on=status, **private)

    def on_page(gallery_name, session_key, request: gr.Request):
        """The sample galleries and this session's own; keeps the choice if it is still there."""
        names = demo.gallery_names(session_of(session_key, request))
        return gr.update(choices=names, value=gallery_name if gallery_name in names else names[0] if names else None)

    return on_page, [gallery, session], [gallery]
