"""The Blocks: one tab per module; each tab wires components to :class:`rge_demo.app.demo.Demo`."""

from __future__ import annotations

import gradio as gr

from rge_demo.app.demo import Demo

from . import compare, explore, failures, galleries, models, train

TITLE = "RGE demo: reasoning guided embeddings"
INTRO = """# Reasoning Guided Embeddings, side by side
An RGE model writes a short rationale about the query before its `<emb>` token becomes the embedding
([arXiv 2511.16150](https://arxiv.org/abs/2511.16150)). Compare it with the direct embedding (no rationale),
explore the embedding space, browse failure cases, and fine-tune on your own pairs."""

# Gradio draws a failed request's "Error" pill in the middle of the component it marks, over a status
# line's text (QA: over "In use in this session", a dataset's summary, Failures' case count). Marked
# components make room at their top and the pill sits there, beside the "clear" cross.
PAGE_CSS = """
.block:has(> [data-testid="status-tracker"] > .error) { padding-top: 2.4rem !important; }
[data-testid="status-tracker"]:has(> .error) { justify-content: flex-start !important; align-items: flex-end !important;
  background: transparent !important; pointer-events: none; padding: 0.35rem 2.4rem 0 0 !important; }
[data-testid="status-tracker"] > .error { font-size: var(--text-sm); line-height: 1.4; pointer-events: auto; }
[data-testid="status-tracker"]:has(> .error) .clear-status { pointer-events: auto; }
"""


def cache_cleanup(retention_hours: float) -> tuple[int, int]:
    """Gradio's ``delete_cache`` (frequency, age) in seconds: files the app's Blocks stored (uploads,
    images it showed) are deleted once older than ``retention_hours``, checked every hour (or more
    often when the retention is shorter)."""
    age = max(1, round(retention_hours * 3600))
    return min(3600, age), age


def build_blocks(demo: Demo) -> gr.Blocks:
    with gr.Blocks(title=TITLE, delete_cache=cache_cleanup(demo.settings.retention_hours)) as blocks:
        gr.Markdown(INTRO)
        model_state = gr.State(None)  # per-session model choice; None means the app's default
        # per-browser key: the owner of its uploads, datasets, jobs, models and galleries
        session = train.session_state(demo)
        remembered = models.remembered_model(demo)  # the model in use, across page reloads
        with gr.Tabs() as tabs:  # a link to a case (?run=&case=) selects Failures on page load
            with gr.Tab("Compare", id="compare"):
                on_compare = compare.build(demo, model_state, session)
            with gr.Tab("Explore", id="explore"):
                on_explore = explore.build(demo, model_state, session)
            with gr.Tab("Failures", id="failures"):
                gallery_steps = [on_compare, on_explore]  # the gallery pickers a new gallery joins
                on_failures = failures.build(demo, model_state, session, tabs, gallery_steps)
            with gr.Tab("Train", id="train"):
                restore_train = train.build(demo, model_state, session)
            with gr.Tab("Models", id="models"):
                on_load = models.build(demo, model_state, session, remembered)
            with gr.Tab("Galleries", id="galleries"):
                on_galleries = galleries.build(demo, model_state, session, then=tuple(gallery_steps))
        # the session key first (made on a browser's first visit), then the lists it owns; a tab
        # whose build returns None has nothing to restore
        event = blocks.load(*restore_train, api_visibility="private")
        for step in (on_load, on_compare, on_explore, on_failures, on_galleries):
            if step is not None:
                event = event.then(*step, api_visibility="private")
    return blocks
