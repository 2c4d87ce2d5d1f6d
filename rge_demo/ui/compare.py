"""Compare tab: one query, direct vs reasoning embeddings side by side, with a streamed rationale."""

from __future__ import annotations

import time

import gradio as gr

from rge_demo.analysis.compare import rationale_note
from rge_demo.analysis.sampling import samples_figure
from rge_demo.app import compare_views
from rge_demo.app.messages import counted
from rge_demo.app.demo import Demo, k_note

from .common import EXPECTED, cleared, friendly, gpu, image_input
from .render import attribution_html, comparison_html, hits_html, moves_html, note_html, samples_html
from .train import session_of

ENCODE_LIMIT = 16  # Compare/search requests served at once (the collector merges up to 16 rows per call)


def _query_choices(g) -> list[tuple[str, str]]:
    return [(f"{q.id}: {q.text[:60]}", q.id) for q in g.queries]


def _target_choices(g) -> list[tuple[str, str]]:
    """(shown name, item id); namesakes of a mixed gallery carry their task: "three (count)"."""
    names = [it.label or it.text or it.id for it in g.items]
    return [(f"{n} ({it.id.split('/')[0]})" if names.count(n) > 1 and "/" in it.id else n, it.id)
            for n, it in zip(names, g.items)]


def _preset_updates(demo: Demo, model_name):
    """Preset choices, the first preset's query instruction and the model / profile line for a model."""
    p = demo.presets(model_name)
    first = next(iter(p["tasks"]), None)
    return (gr.update(choices=list(p["tasks"]), value=first),
            p["tasks"][first]["query"] if first else gr.update(), compare_views.model_line(demo, model_name))


def build(demo: Demo, model_state: gr.State, session: gr.BrowserState | None = None):
    """Lay out the tab; returns (fn, inputs, outputs) for the page's load event (the session's galleries).

    ``session`` is the browser's key: the gallery list holds the sample galleries and this session's own.
    """
    session = session if session is not None else gr.State(None)
    galleries = sorted(demo.galleries)
    presets = demo.presets(None)  # the default model's prompt profile; follows model_state below
    first_preset = next(iter(presets["tasks"]), None)
    # The page opens on the default example: a query where reasoning visibly helps.
    default = next((e for e in demo.examples() if e["gallery"] in galleries), None)
    first = default["gallery"] if default else galleries[0] if galleries else None
    with gr.Row():
        with gr.Column(scale=1):
            gallery = gr.Dropdown(galleries, value=first, label="Gallery to search")
            pick = gr.Dropdown(_query_choices(demo.gallery(first)) if first else [], label="Pick a query from the gallery",
                               value=None)
            image = image_input(default and default["image"], label="Query image (optional)", height=200)
            text = gr.Textbox(default["text"] if default else "", label="Query text", lines=2)
            preset = gr.Dropdown(list(presets["tasks"]), value=first_preset,
                                 label="Task preset (the loaded model's prompt profile)")
            instruction = gr.Textbox(label="Task instruction", lines=2,
                                     value=default["instruction"] if default else
                                     presets["tasks"][first_preset]["query"] if first_preset else "")
            profile_line = gr.Markdown(compare_views.model_line(demo, None), elem_id="prompt-profile")
            target = gr.Dropdown(_target_choices(demo.gallery(first)) if first else [], value=default and default["target_id"],
                                 allow_custom_value=True,
                                 label="Right answer (optional: marks its rank)")
            k = gr.Slider(1, 20, value=5, step=1, label="k")
            run = gr.Button("Compare", variant="primary")
        with gr.Column(scale=2):
            cost = gr.Markdown(elem_id="compare-status")
            with gr.Row():
                with gr.Column():
                    direct_out = gr.HTML(label="Direct")
                with gr.Column():
                    rationale = gr.Textbox(label="Rationale (streams; edit it and re-embed)", lines=4,
                                           interactive=True, elem_id="rationale")
                    reembed_btn = gr.Button("Re-embed with this rationale")
                    reason_out = gr.HTML(label="Reasoning")
            moved = gr.HTML()
    with gr.Accordion("Sampled rationales: N per query at a temperature", open=True):
        with gr.Row():
            n_samples = gr.Number(8, precision=0, label="Samples (N)")
            temperature = gr.Number(1.0, label="Temperature")
            seed = gr.Number(0, precision=0, label="Seed")
            sample_btn = gr.Button("Sample rationales")
        sample_status = gr.Markdown(elem_id="sample-status")
        with gr.Row():
            with gr.Column(scale=2):
                sample_plot = gr.Plot(label="Samples beside the direct, greedy and centroid points (PCA)",
                                      elem_id="sample-plot")
            with gr.Column(scale=3):
                sample_table = gr.HTML(elem_id="sample-table")
        with gr.Accordion("Sampling result as JSON", open=False):
            sample_json = gr.JSON(label="/sample result")
    with gr.Accordion("Attribution: what each part of the rationale does", open=True):
        with gr.Row():
            attribute_btn = gr.Button("Attribute the rationale (leave one part out)")
        attribute_status = gr.Markdown(elem_id="attribute-status")
        attribution = gr.HTML(elem_id="attribution")
        with gr.Accordion("Attribution as JSON", open=False):
            attribution_json = gr.JSON(label="/attribute result")
    with gr.Accordion("Embed-RL: a Reasoner's T-CoT, embedded by the model in use", open=False):
        reasoners = demo.workbench.shared_model_names()
        with gr.Row(equal_height=True):
            reasoner = gr.Dropdown(reasoners, value=next((n for n in reasoners if "reasoner" in n), None),
                                   allow_custom_value=True, label="Reasoner model", scale=2)
            tcot_btn = gr.Button("Reason with the Reasoner", scale=1)
        tcot_status = gr.Markdown(elem_id="tcot-status")
        with gr.Row():
            tcot_text = gr.Textbox(label="The Reasoner's T-CoT", lines=3, interactive=False, elem_id="tcot")
            tcot_out = gr.HTML(elem_id="tcot-hits")
    last = gr.State(None)

    def own_gallery(gallery_name, browser_key, request):
        """The named gallery if this session may use it, else None (the pickers then stay as they are)."""
        try:
            return demo.gallery(gallery_name, session_of(browser_key, request))
        except EXPECTED:
            return None

    def on_gallery(gallery_name, target_id, current_preset, model_name, browser_key, request: gr.Request):
        """The gallery's query and answer pickers, and a task preset of its queries (the instruction follows)."""
        g = own_gallery(gallery_name, browser_key, request)
        if g is None:
            return gr.update(), gr.update(), gr.update()
        keep = target_id if target_id in g else None
        preset = compare_views.preset_for_gallery(demo, model_name, g, current_preset)
        return (gr.update(choices=_query_choices(g), value=None), gr.update(choices=_target_choices(g), value=keep),
                preset or gr.update())

    def on_pick(gallery_name, query_id, model_name, browser_key, request: gr.Request):
        """The picked query's image, text, instruction and right answer; the task preset follows its task
        (blank when the loaded model's profile has no preset of that name: the instruction is the query's)."""
        g = own_gallery(gallery_name, browser_key, request)
        q = next((q for q in g.queries if q.id == query_id), None) if g and query_id else None
        if q is None:
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        img = str(g.image_path(q.image)) if q.image else None
        preset = q.task if q.task in demo.presets(model_name)["tasks"] else None
        return img, q.text, q.instruction, gr.update(choices=_target_choices(g), value=q.target_id), preset

    def on_page(gallery_name, browser_key, request: gr.Request):
        """The gallery list of this session (samples, then its own); keeps the choice if it is still there."""
        names = demo.gallery_names(session_of(browser_key, request))
        return gr.update(choices=names, value=gallery_name if gallery_name in names else first)

    def status_line(g, k, line):
        note = k_note(k, len(g.items)) if isinstance(k, int) else ""
        return f"{note} {line}".strip()

    @gpu
    @friendly
    def on_run(gallery, image, query_text, instruction, target_id, k, model_name, session_key=None,
               request: gr.Request = None):
        """Direct and reasoning top-k of one query, streamed: (direct, rationale, reasoning, moves, status).
        The reasoning column starts with the rationale's note (hallucination flag, empty or cut-off)."""
        key = session_of(session_key, request)
        g = demo.gallery(gallery, key)
        target_id = demo.target_for(g, target_id, key)
        facts = None
        shown = (None, None, None)
        for c in demo.compare(gallery, image, query_text, instruction, k, target_id, model_name, session_key=key):
            if facts is None:
                facts = compare_views.scene_facts_of(g, image, query_text) or {}
            d, r, m = comparison_html(c, g.root, target_id, rationale_note(c, facts or None))
            status = status_line(g, int(k), c.cost_line())
            if c.done:  # the last update is whole: it is what an API caller reads
                yield d, c.rationale, r, m, status, c
                continue
            # While the rationale streams, send only what changed (mostly the rationale and the status).
            fresh = [new if new != old else gr.skip() for new, old in zip((d, r, m), shown)]
            shown = (d, r, m)
            yield fresh[0], c.rationale, fresh[1], fresh[2], status, gr.skip()

    @friendly
    def on_reembed(gallery, image, query_text, instruction, target_id, k, rationale, previous, model_name,
                   session_key=None, request: gr.Request = None):
        """The reasoning side again from an edited rationale: (reasoning, moves)."""
        key = session_of(session_key, request)
        g = demo.gallery(gallery, key)
        c = demo.reembed(gallery, image, query_text, instruction, rationale, previous, k, target_id, model_name,
                         session_key=key)
        title = "Reasoning (your edited rationale)"
        note = note_html(rationale_note(c, compare_views.scene_facts_of(g, image, query_text)))
        return hits_html(c.reason, g.root, target_id, title, note), moves_html(c.moves), c

    @gpu
    @friendly
    def on_sample(gallery, image, query_text, instruction, target_id, n, temperature, seed, model_name,
                  session_key=None, request: gr.Request = None):
        """N rationales sampled at a temperature (one batched generate, seeded), each with its stated answer,
        the right answer's rank and cosine; spread, pass@k, centroid rank: (status, figure, table, JSON)."""
        t0 = time.perf_counter()
        view = compare_views.sample_view(demo, gallery, image, query_text, instruction, target_id, n, temperature,
                                         seed, model_name, session_of(session_key, request))
        line = (f"Sampled {counted(len(view.result.samples), 'rationale')} with {view.model} in "
                f"{time.perf_counter() - t0:.1f} s (direct and greedy included).")
        return line, samples_figure(view.result), samples_html(view), view.to_dict()

    @gpu
    @friendly
    def on_attribute(gallery, image, query_text, instruction, target_id, rationale, model_name, session_key=None,
                     request: gr.Request = None):
        """Each sentence's and clause's contribution to the cosine with the right answer and the top-1 wrong
        candidate (leave-one-out, one batched forward): (status, shaded rationale, JSON)."""
        t0 = time.perf_counter()
        att = compare_views.attribution_view(demo, gallery, image, query_text, instruction, target_id, rationale,
                                             model_name, session_of(session_key, request))
        line = (f"Attributed {counted(len(att.sentences), 'sentence')} and {counted(len(att.clauses), 'clause')} in "
                f"{time.perf_counter() - t0:.1f} s.")
        return line, attribution_html(att), att.to_dict()

    private = {"api_visibility": "private"}  # UI-only events: not API endpoints
    gallery.change(on_gallery, [gallery, target, preset, model_state, session], [pick, target, preset], **private)
    pick.change(on_pick, [gallery, pick, model_state, session], [image, text, instruction, target, preset], **private)
    preset.change(lambda p, m: demo.presets(m)["tasks"].get(p, {}).get("query", gr.update()), [preset, model_state],
                  instruction, **private)
    model_state.change(lambda m: _preset_updates(demo, m), model_state, [preset, instruction, profile_line],
                       **private)
    inputs = [gallery, image, text, instruction, target, k, model_state, session]
    outputs = [direct_out, rationale, reason_out, moved, cost, last]
    # A new comparison, or another gallery picked, takes the last one off the page first: a refused request
    # (QA: a text file named .png) left it there, read as the new query's result once the toast faded.
    clear = cleared(outputs)
    gallery.input(**clear)
    # Compare and search share "encode" (not the one-at-a-time "model" slot): concurrent requests reach the
    # encoder's request collector, which merges them into one batch (rge_demo.embedding.batcher).
    # A failed request marks only the status line with gradio's error badge.
    run.click(**clear).then(on_run, inputs, outputs, api_name="compare", concurrency_id="encode",
                            concurrency_limit=ENCODE_LIMIT, show_progress_on=cost)
    reembed_btn.click(on_reembed, [gallery, image, text, instruction, target, k, rationale, last, model_state, session],
                      [reason_out, moved, last], api_name="reembed", concurrency_id="model", show_progress_on=cost)
    # Sampling, attribution and the Embed-RL panel likewise start from an empty panel (QA: a refused
    # Reasoner left the previous T-CoT and top-k under the new name).
    sample_out = [sample_status, sample_plot, sample_table, sample_json]
    sample_btn.click(**cleared(sample_out)).then(
        on_sample, [gallery, image, text, instruction, target, n_samples, temperature, seed, model_state, session],
        sample_out, api_name="sample", concurrency_id="model", show_progress_on=sample_status)
    attribute_out = [attribute_status, attribution, attribution_json]
    attribute_btn.click(**cleared(attribute_out)).then(
        on_attribute, [gallery, image, text, instruction, target, rationale, model_state, session], attribute_out,
        api_name="attribute", concurrency_id="model", show_progress_on=attribute_status)

    @gpu
    @friendly
    def on_tcot(gallery, image, query_text, instruction, target_id, k, reasoner, model_name, session_key=None,
                request: gr.Request = None):
        """Embed-RL beside RGE: the Reasoner's T-CoT, embedded by the model in use: (status, T-CoT, top-k)."""
        view = compare_views.tcot_view(demo, gallery, image, query_text, instruction, k, target_id, reasoner,
                                       model_name, session_of(session_key, request))
        g = demo.gallery(gallery, session_of(session_key, request))
        cut = " (cut off by the token budget)" if view.forced else ""
        line = (f"Reasoner **{view.reasoner}** wrote {view.tokens} tokens{cut}; Embedder **{view.embedder}** "
                f"embedded them; {view.side.seconds:.2f} s in all.")
        return line, view.tcot, hits_html(view.side, g.root, target_id or None, "Embed-RL top-k")

    tcot_out_all = [tcot_status, tcot_text, tcot_out]
    tcot_btn.click(**cleared(tcot_out_all)).then(
        on_tcot, [gallery, image, text, instruction, target, k, reasoner, model_state, session], tcot_out_all,
        api_name="tcot", concurrency_id="model", show_progress_on=tcot_status)

    @gpu
    @friendly
    def search(gallery, query_text, instruction, k, reason, image, session_key=None, request: gr.Request = None):
        """Top-k of a gallery for one query in one mode: {"rationale", "note", "hits": [{rank, id, label, score}]}.
        ``session_key`` (optional) names the session whose own galleries may be searched."""
        return demo.search(gallery, image, query_text, instruction, k, bool(reason),
                           session_key=session_of(session_key, request))

    # API-only endpoint: hidden components give it gradio's normal (safe) file handling.
    with gr.Row(visible=False):
        api_inputs = [gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Number(value=5, precision=0), gr.Checkbox(),
                      image_input(), gr.Textbox()]
        api_out, api_btn = gr.JSON(), gr.Button()
    api_btn.click(search, api_inputs, api_out, api_name="search", concurrency_id="encode",
                  concurrency_limit=ENCODE_LIMIT)

    # The first examples are queries where the shipped model's reasoning visibly helps (assets/examples.json).
    examples = [[e["gallery"], e["image"], e["text"], e["instruction"], e["target_id"]]
                for e in demo.examples() if e["gallery"] in galleries]
    if examples:
        # The table draws the right answer through the dropdown's choices as they are now: the first
        # gallery's only, so 8 of 10 cells were blank. Every example's gallery lends its names meanwhile.
        own_choices = target.choices
        target.choices = list(dict.fromkeys(c for name in dict.fromkeys(e[0] for e in examples)
                                            for c in _target_choices(demo.gallery(name))))
        ex = gr.Examples(examples, [gallery, image, text, instruction, target],
                         label="Examples: click one to run it (the first ones: reasoning helps)")
        target.choices = own_choices
        # One click fills the inputs (the preset follows the example's instruction), then runs the comparison.
        ex.load_input_event.then(lambda ins, cur, m: compare_views.preset_for_instruction(demo, m, ins, cur),
                                 [instruction, preset, model_state], preset, **private)
        ex.load_input_event.then(**clear).then(on_run, inputs, outputs, concurrency_id="encode",
                                               concurrency_limit=ENCODE_LIMIT, show_progress_on=cost, **private)
    return on_page, [gallery, session], [gallery]
