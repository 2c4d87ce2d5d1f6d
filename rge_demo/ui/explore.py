"""Explore tab: one shared map of gallery items and queries in both modes, and a point's neighbours."""

from __future__ import annotations

import html

import gradio as gr

from rge_demo.analysis.projection import projection_figure, umap_state
from rge_demo.app.demo import Demo, check_choice

from .common import friendly, gpu
from .render import STYLE, thumbnail


def _point_html(point, neighbours) -> str:
    img = f'<img class="rge-thumb" style="width:96px;height:96px" src="{thumbnail(point.image)}">' if point.image else ""
    lines = [f"<b>{html.escape(point.kind)}</b> <code>{html.escape(point.id)}</code>", html.escape(point.text or ""),
             f"label / right answer: <b>{html.escape(point.label)}</b>"]
    if point.correct is not None:
        lines.append("ranked the right answer first" if point.correct else "did NOT rank the right answer first")
    if point.rationale:
        lines.append(f"rationale: <i>{html.escape(point.rationale)}</i>")
    rows = "".join(
        f"<tr><td>{i}</td><td>{'<img class=rge-thumb src=' + thumbnail(p.image) + '>' if p.image else ''} "
        f"{html.escape(p.label)}</td><td>{s:+.3f}</td></tr>" for i, (p, s) in enumerate(neighbours, 1))
    return (f"{STYLE}<div>{img}<br>{'<br>'.join(lines)}</div><p><b>Nearest gallery items</b> (full space)</p>"
            f'<table class="rge-hits"><tr><th>#</th><th>item</th><th>cosine</th></tr>{rows}</table>')


def build(demo: Demo, model_state: gr.State, session: gr.BrowserState | None = None):
    galleries = sorted(demo.galleries)
    with gr.Row():
        gallery = gr.Dropdown(galleries, value=galleries[0] if galleries else None, label="Gallery")
        method = gr.Radio(["umap", "pca"], value="umap", label="Projection")
        colour = gr.Radio(["label", "correct"], value="label", label="Colour by")
        go_btn = gr.Button("Project", variant="primary")
    status = gr.Markdown("Choose a gallery and press **Project**.", elem_id="explore-status")
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.Plot(label="Items (dots), queries direct (rings) -> reasoning (diamonds)")
        with gr.Column(scale=2):
            picker = gr.Dropdown([], label="Choose a point", value=None)
            detail = gr.HTML()
    state = gr.State(None)

    @gpu
    @friendly
    def on_project(gallery, method, colour_by, model_name, progress=gr.Progress()):
        """A shared 2-D map of a gallery's items and queries: (figure, note, point picker)."""
        check_choice(colour_by, ("label", "correct"), "colour by")
        progress(0.2, desc="embedding the gallery's queries in both modes")
        proj = demo.projection(gallery, model_name, method)
        labels = [p.label for p in proj.points]
        hover = [f"{p.kind}: {p.text or p.label}" + (f"<br>{p.rationale[:80]}" if p.rationale else "")
                 for p in proj.points]
        correct = [p.correct for p in proj.points]
        thumbs = [thumbnail(p.image) if p.image else None for p in proj.points if p.kind == "item"]
        fig = projection_figure(proj.result, labels, colour_by, hover, thumbnails=thumbs, correct=correct)
        note = f"Method: **{proj.result.method.upper()}**"
        if method == "umap" and proj.result.method != "umap":
            note += f" (UMAP is {umap_state()}; PCA shown meanwhile - press Project again in a few seconds)"
        choices = [(f"{p.kind}: {p.id} ({p.label})", i) for i, p in enumerate(proj.points)]
        return fig, note, gr.update(choices=choices, value=None), proj

    @friendly
    def on_pick(proj, i):
        if proj is None or i is None:
            return ""
        return _point_html(proj.points[int(i)], demo.neighbours(proj, int(i)))

    # A failed request marks only the note line with gradio's error badge; the map and picker stay usable.
    go_btn.click(on_project, [gallery, method, colour, model_state], [plot, status, picker, state],
                 api_name="project", concurrency_id="model", show_progress_on=status)
    picker.change(on_pick, [state, picker], detail, api_visibility="private")
