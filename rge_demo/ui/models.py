"""Models tab: what is loaded and where; load another model (hub id or folder); unload."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from rge_demo.app.demo import Demo

from .common import friendly
from .train import session_of

STATUS_COLUMNS = ["name", "source", "device", "dtype", "quantization", "parameters", "memory_mb", "loaded_at"]
CATALOG_COLUMNS = ["name", "state", "kind", "source", "description"]  # the state in view, the description wrapped


def remembered_model(demo: Demo) -> gr.BrowserState:
    """``{"name": ...}``, the model this browser used last, kept in its storage (Gradio encrypts it with the
    app's secret, which it serves to the page: it is the browser's to read, like the session key).
    Create it outside the tabs: a component inside a tab not shown yet is not mounted, so its stored value
    would not reach the page's load event."""
    return gr.BrowserState(None, storage_key="rge-demo-model", secret=demo.workbench.browser_secret)


def build(demo: Demo, model_state: gr.State, session: gr.BrowserState | None = None,
          remembered: gr.BrowserState | None = None):
    """Lay out the tab; returns (fn, inputs, outputs) for the page's load event.

    ``session`` is the browser's key: the lists show the shared models and those this browser added.
    ``remembered`` (:func:`remembered_model`) keeps the model in use across page reloads: the load event
    puts it back into ``model_state`` if this session still sees it.
    """
    bench = demo.workbench
    session = session if session is not None else gr.State(None)
    remembered = remembered if remembered is not None else gr.State(None)
    gr.Markdown("The model chosen here is used by every tab in this browser, across page reloads.")
    current = gr.Markdown(elem_id="models-status")
    status = gr.Dataframe(headers=STATUS_COLUMNS, label="Loaded models", interactive=False, wrap=True,
                          column_widths=["15%", "29%", "6%", "8%", "10%", "10%", "10%", "12%"])  # all in view
    catalog = gr.Dataframe(headers=CATALOG_COLUMNS, label="Registry", interactive=False, wrap=True,
                           column_widths=["18%", "14%", "7%", "25%", "36%"])
    with gr.Row():
        roots = demo.settings.model_roots
        folders = f"a folder under {', '.join(map(str, roots))}" if roots else "(folders: off, RGE_MODEL_ROOTS)"
        source = gr.Dropdown(bench.shared_model_names(), value=demo.default_model, allow_custom_value=True,
                             label=f"Model: registry name, hub id or {folders}" if roots
                             else f"Model: registry name or hub id {folders}")
        dtype = gr.Dropdown(["auto", "float32", "bfloat16", "float16"], value="auto", label="dtype")
        quant = gr.Dropdown(["none", "8bit", "4bit"], value="none", label="quantization (bitsandbytes, CUDA)")
    with gr.Row():
        load = gr.Button("Load and use", variant="primary")
        unload = gr.Button("Unload")
        refresh = gr.Button("Refresh")

    def tables(model_name, session_key=None, request: gr.Request = None):
        catalog_rows = bench.visible_catalog(session_key, getattr(request, "session_hash", None))
        visible = {r["name"] for r in catalog_rows}
        rows = [r for r in demo.model_status() if r["name"] in visible]
        return (f"**In use in this session:** `{demo.model_label(model_name)}`",
                pd.DataFrame(rows, columns=STATUS_COLUMNS) if rows else pd.DataFrame(columns=STATUS_COLUMNS),
                pd.DataFrame(catalog_rows, columns=CATALOG_COLUMNS))

    @friendly
    def on_load(name, dtype, quantization, session_key, request: gr.Request, progress=gr.Progress()):
        """Load a model (registry name, folder or hub id) and use it in this session."""
        dt, q = dtype, quantization
        key = session_of(session_key, request)

        def load(spec):
            # not under other sessions' feet: a shared model they may use stays as it is loaded
            settings = bench.load_settings(key, spec.name, dt, None if q == "none" else q)
            progress(0.1, desc=f"loading {spec.name}")
            return demo.load_model(spec.name, *settings,
                                   progress=lambda gallery, done, total: progress(
                                       0.5, desc=f"embedding gallery {gallery}: {done}/{total}"))

        loaded = bench.use_model(key, name, load)  # a new folder or hub id joins this browser's list once it loads
        return (loaded.name, *tables(loaded.name, key), gr.update(choices=bench.model_names(key)))

    @friendly
    def on_unload(name, model_name, session_key, request: gr.Request):
        """Unload a loaded model of this session's (a shared one is refused: other sessions use it)."""
        key = session_of(session_key, request)
        bench.check_model(key, name)
        bench.check_unload(key, name)
        demo.unload_model(name)
        # the model in use falls back to the default if it was this one, however either was named
        using = None if demo.model_label(name) == demo.model_label(model_name) else model_name
        return (using, *tables(using, session_key, request))

    @friendly
    def model_list(model_name, session_key=None, request: gr.Request = None):
        """What is loaded and the registry this session sees: (in use, loaded models, registry)."""
        return tables(model_name, session_key, request)

    # A failed request marks only the "in use" line with gradio's error badge; the tables are read again,
    # since the refusal may have changed them (QA: a model whose folder was deleted stayed listed "loaded").
    def tables_again(model_name, session_key=None, request: gr.Request = None):
        return tables(model_name, session_key, request)[1:]

    again = dict(fn=tables_again, inputs=[model_state, session], outputs=[status, catalog], show_progress="hidden",
                 api_visibility="private")
    load.click(on_load, [source, dtype, quant, session], [model_state, current, status, catalog, source],
               api_name="load_model", show_progress_on=current).failure(**again)
    unload.click(on_unload, [source, model_state, session], [model_state, current, status, catalog],
                 api_name="unload_model", show_progress_on=current).failure(**again)
    refresh.click(model_list, [model_state, session], [current, status, catalog], api_name="model_status",
                  show_progress_on=current)

    def follow(model_name, session_key, request: gr.Request):
        """The tables and the picker after the model in use changed, wherever it was changed (QA: after
        Train's "Load in Compare" the picker still showed the old model, and Unload acted on that one)."""
        key = session_of(session_key, request)
        return (*tables(model_name, key, request),
                gr.update(choices=bench.model_names(key), value=model_name or demo.default_model))

    model_state.change(follow, [model_state, session], [current, status, catalog, source], show_progress_on=current,
                       api_visibility="private")

    # stored as {"name": ...}: the browser does not store a bare None, so an unload would not be remembered
    model_state.change(lambda name: {"name": name}, model_state, remembered, api_visibility="private")

    def on_page(model_name, last_used, session_key, request: gr.Request):
        """The tables, and the model this browser used last, if this session still sees it."""
        names = [r["name"] for r in bench.visible_catalog(session_key, getattr(request, "session_hash", None))]
        name = model_name or (last_used or {}).get("name")
        gone = name if name and name not in names else None
        name = None if gone else name
        using, *rest = tables(name, session_key, request)
        if gone:
            using += f" (`{gone}`, the model this browser used last, is no longer available)"
        return (name, using, *rest, gr.update(choices=names, value=name or demo.default_model))

    return on_page, [model_state, remembered, session], [model_state, current, status, catalog, source]
