"""Models tab: what is loaded and where; load another model (hub id or folder); unload."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from rge_demo.service import Demo

from .common import friendly

STATUS_COLUMNS = ["name", "source", "device", "dtype", "quantization", "parameters", "memory_mb", "loaded_at"]


def build(demo: Demo, model_state: gr.State):
    """Lay out the tab; returns (fn, inputs, outputs) for the page's load event."""
    gr.Markdown("The model chosen here is used by every tab in this browser session.")
    current = gr.Markdown()
    status = gr.Dataframe(headers=STATUS_COLUMNS, label="Loaded models", interactive=False)
    catalog = gr.Dataframe(label="Registry", interactive=False)
    with gr.Row():
        source = gr.Dropdown([s.name for s in demo.manager.specs()], value=demo.default_model,
                             label="Model: registry name, local folder or hub id", allow_custom_value=True)
        dtype = gr.Dropdown(["auto", "float32", "bfloat16", "float16"], value="auto", label="dtype")
        quant = gr.Dropdown(["none", "8bit", "4bit"], value="none", label="quantization (bitsandbytes, CUDA)")
    with gr.Row():
        load = gr.Button("Load and use", variant="primary")
        unload = gr.Button("Unload")
        refresh = gr.Button("Refresh")

    def tables(model_name):
        rows = demo.manager.status()
        using = model_name or demo.default_model
        return (f"**In use in this session:** `{using}`",
                pd.DataFrame(rows, columns=STATUS_COLUMNS) if rows else pd.DataFrame(columns=STATUS_COLUMNS),
                pd.DataFrame(demo.manager.catalog()))

    @friendly
    def on_load(name, dt, q, progress=gr.Progress()):
        progress(0.1, desc=f"loading {name}")
        loaded = demo.manager.load(name, dtype=dt, quantization=None if q == "none" else q)
        progress(0.6, desc="embedding the galleries")
        demo.warm(loaded.name)
        return (loaded.name, *tables(loaded.name), gr.update(choices=[s.name for s in demo.manager.specs()]))

    @friendly
    def on_unload(name, model_name):
        if not demo.manager.unload(name):
            raise gr.Error(f"{name!r} is not loaded")
        using = None if name == model_name else model_name
        return (using, *tables(using))

    load.click(on_load, [source, dtype, quant], [model_state, current, status, catalog, source], api_name="load_model")
    unload.click(on_unload, [source, model_state], [model_state, current, status, catalog], api_name="unload_model")
    refresh.click(tables, model_state, [current, status, catalog])
    model_state.change(tables, model_state, [current, status, catalog])
    return tables, model_state, [current, status, catalog]
