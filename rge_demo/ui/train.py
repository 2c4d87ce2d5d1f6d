"""Train tab (being built)."""

import gradio as gr


def build(demo, model_state) -> None:
    gr.Markdown("Training from the browser is being built.")
