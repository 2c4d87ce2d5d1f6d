"""Galleries tab: bring your own gallery (a zip, a folder on the server, an MMEB-eval subset) for this session."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from rge_demo.app.demo import Demo
from rge_demo.app.messages import counted

from .common import cleared, friendly
from .train import session_of

HELP = """Bring your own gallery. It is yours alone (other sessions do not see it), embedded in the
background with the model in use, and then searchable in Compare (and over the API's `/search`),
mapped in Explore and evaluated in Failures (its queries that have a right answer).

* **A zip**: images with `labels.csv` or `labels.jsonl` (columns `file`, `label`, optional `text`;
  a row with `query` set to yes becomes a query whose right answer is the item of its label), a
  folder with a `manifest.json`, or images alone (labelled by file name).
* **A folder on the server**: the same layouts, read in place.
* **MMEB-eval**: a local copy of TIGER-Lab/MMEB-eval and a subset name (e.g. `ImageNet-1K`).

The two server sources are offered when the app was started with folders to read them from
(`RGE_GALLERY_ROOTS`); otherwise a zip is the way in."""

COLUMNS = ["gallery", "items", "queries", "embedding", "progress"]


def build(demo: Demo, model_state: gr.State, session: gr.BrowserState, then: tuple = ()):
    """Lay out the tab; returns (fn, inputs, outputs) for the page's load event (this session's list).
    ``then``: (fn, inputs, outputs) steps run after a gallery is added or removed (the other tabs' gallery
    pickers), so the new gallery is there without a page reload."""
    gr.Markdown(HELP)
    with gr.Row():
        with gr.Column():
            # The server-folder sources are shown where the app was given folders (RGE_GALLERY_ROOTS); else they
            # would only be refused (an API call that asks for one still gets the sentence why).
            kind = gr.Radio(["zip", "folder", "mmeb"], value="zip", label="Source",
                            visible=bool(demo.settings.gallery_roots))
            upload = gr.File(label="Zip of the gallery", file_types=[".zip"], type="filepath", elem_id="gallery-zip")
            path = gr.Textbox(label="Folder on the server (or the MMEB-eval folder)", visible=False)
            subset = gr.Textbox(label="MMEB-eval subset", visible=False)
            limit = gr.Number(value=None, precision=0, label="Rows of the subset at most (optional)", visible=False)
            name = gr.Textbox(label="Gallery name (required)", placeholder="my photos")
            add = gr.Button("Register and embed", variant="primary")
        with gr.Column():
            message = gr.Markdown()
            table = gr.Dataframe(headers=COLUMNS, label="Your galleries", interactive=False)
            with gr.Row():
                picked = gr.Dropdown([], label="Gallery", allow_custom_value=True)
                remove = gr.Button("Remove")
    timer = gr.Timer(1.0, active=False)  # polls while a gallery is embedding

    def rows(key, keep: str | None = None, polled: bool = False):
        """The table, the picker (its value ``keep`` while that gallery is still listed) and the timer.
        ``polled``: a tick that saw no pick leaves the picker's value alone, since a registration may
        have set it since the tick was sent (QA, under load: the new gallery was picked, then unpicked)."""
        listed = demo.own_galleries(key)
        df = pd.DataFrame([[g["name"], g["items"], g["queries"],
                            f"{g['state']}: {g['error']}" if g.get("error") else g["state"], f"{g['done']}/{g['total']}"]
                           for g in listed], columns=COLUMNS)
        busy = any(g["state"] == "embedding" for g in listed)
        names = [g["name"] for g in listed]
        picker = gr.update(choices=names) if polled and not keep else gr.update(choices=names, value=keep if keep in names else None)
        return df, picker, gr.Timer(active=busy)

    def on_kind(k):
        return (gr.update(visible=k == "zip"), gr.update(visible=k != "zip"), gr.update(visible=k == "mmeb"),
                gr.update(visible=k == "mmeb"))

    @friendly
    def on_add(source_kind, zip_file, folder, subset, max_rows, name, model_name, session_key,
               request: gr.Request):
        key = session_of(session_key, request)
        source = zip_file if source_kind == "zip" else folder
        if not source:
            raise gr.Error("choose a zip file" if source_kind == "zip" else "enter a folder path on the server")
        g = demo.register_gallery(key, source, name, kind=source_kind, subset=subset or None,
                                  limit=int(max_rows) if max_rows else None, model_name=model_name)
        where = ("Compare, Explore and Failures" if g.queries
                 else "Compare and Explore (not Failures: it has no queries to evaluate)")
        text = (f"Registered **{g.name}**: {counted(len(g.items), 'item')}, {counted(len(g.queries), 'query', 'queries')}; "
                f"embedding in the background. It is in the gallery lists of {where} now.")
        return (text, *rows(key, g.name))

    @friendly
    def on_remove(gallery, session_key, request: gr.Request):
        key = session_of(session_key, request)
        if not gallery:
            raise gr.Error("pick one of your galleries to remove")
        demo.remove_gallery(gallery, key)
        return (f"Removed {gallery}.", *rows(key))

    def on_tick(browser_key, current, request: gr.Request):
        return rows(session_of(browser_key, request), current, polled=True)

    kind.change(on_kind, kind, [upload, path, subset, limit], api_visibility="private")
    # The last outcome goes first: a refusal's error badge must not sit on an earlier success as if on its own
    # (QA: "Registered flat count: 10 item[Error]embedding in the background" after a bad zip).
    clear = cleared([message])
    added = add.click(**clear).then(on_add, [kind, upload, path, subset, limit, name, model_state, session],
                                    [message, table, picked, timer], api_name="register_gallery",
                                    show_progress_on=message)
    removed = remove.click(**clear).then(on_remove, [picked, session], [message, table, picked, timer],
                                         api_name="remove_gallery", show_progress_on=message)
    for event in (added, removed):
        for step in then:
            event = event.success(*step, api_visibility="private")
    timer.tick(on_tick, [session, picked], [table, picked, timer], api_visibility="private")
    return on_tick, [session, picked], [table, picked, timer]
