"""Failures tab: saved or new evaluation runs in both modes (world tasks or a gallery), a sortable,
filterable case grid with thumbnails, a case view reachable by URL, export, P@1 bars, guided tours."""

from __future__ import annotations

import html
import time
from pathlib import Path

import gradio as gr

from rge_demo.analysis.cost import cost_figure
from rge_demo.analysis.failures import (GRID_COLUMNS, OUTCOMES, TAGS, case_grid, filter_cases, p1_bars, p1_figure,
                                        search_cases, shorten, tag_case)
from rge_demo.app.demo import Demo, user_errors, world_task_names
from rge_demo.app.messages import counted, public_message
from rge_demo.app.explore import small_thumbnail
from rge_demo.app.failure_runs import case_link, parse_case_link

from .common import friendly, gpu, md_literal
from .render import STYLE, attribution_html, thumbnail
from .train import session_of

ALL = "all"
META_TASKS = ["classification", "vqa", "retrieval", "grounding"]
THUMB_PX = 48
# Readable grid: the theme's sans font (gradio's Dataframe defaults to monospace), real thumbnails.
GRID_CSS = f"""<style>
#failures-grid [role=gridcell], #failures-grid [role=gridcell] span, #failures-grid th span,
#failures-grid td, #failures-grid th {{font-family: var(--font) !important; font-size: 14px !important}}
#failures-grid .md img {{width:{THUMB_PX}px !important; height:{THUMB_PX}px !important; max-width:none !important;
  margin:0 !important; image-rendering:pixelated; border:1px solid #d1d5db; border-radius:3px}}
#failures-grid .md p {{margin:0 !important}}
#failures-grid th span {{word-break:normal !important; overflow-wrap:normal !important}}
</style>"""
GRID_WIDTHS = ["70px", "110px", "100px", "52px", "206px", "104px", "70px", "100px", "122px", "132px", "140px"]  # 1206 px
GRID_TYPES = ["markdown", "str", "str", "str", "str", "str", "number", "number", "str", "str", "str"]


def _topk_html(topk: list[dict], target_id: str, title: str) -> str:
    rows = "".join(
        f'<tr{" class=target" if t["id"] == target_id else ""}><td>{i}</td><td>{html.escape(str(t.get("label") or t["id"]))}'
        f'</td><td>{float(t["score"]):+.3f}</td></tr>' for i, t in enumerate(topk, 1))
    return f'<p><b>{title}</b></p><table class="rge-hits"><tr><th>#</th><th>candidate</th><th>cosine</th></tr>{rows}</table>'


def case_html(c, explanation: str = "") -> str:
    img = (f'<img class="rge-thumb" style="width:126px;height:126px" src="{thumbnail(c.image)}">'
           if c.image and Path(c.image).is_file() else "")
    tags = " ".join(f'<span class="rge-badge rge-down">{html.escape(t)}</span>' for t in tag_case(c))
    forced = " (budget reached)" if c.forced else ""
    intro = f'<div style="background:#eff6ff;padding:8px;border-radius:6px">{html.escape(explanation)}</div>' if explanation else ""
    return f"""{STYLE}{intro}
<div style="display:flex;gap:16px;margin-top:8px"><div>{img}</div><div>
<b>{html.escape(c.task)}</b> ({html.escape(c.meta_task)}, {html.escape(c.split)}) <code>{html.escape(c.query_id)}</code><br>
<i>{html.escape(c.instruction)}</i> {html.escape(c.text)}<br>
right answer: <b>{html.escape(c.target_label)}</b> &middot; direct rank {c.direct_rank} &middot; reasoning rank {c.reason_rank}<br>
rationale ({c.tokens} tokens{forced}): <i>{html.escape(c.rationale)}</i><br>{tags}</div></div>
<div style="display:flex;gap:16px"><div style="flex:1">{_topk_html(c.direct_topk, c.target_id, "Direct top-k")}</div>
<div style="flex:1">{_topk_html(c.reason_topk, c.target_id, "Reasoning top-k")}</div></div>"""


def grid_frame(cases):
    """The grid's value: a thumbnail column (markdown image of the query) before the library's columns."""
    frame = case_grid(cases)
    frame.insert(0, "image", [f"![query]({small_thumbnail(c.image, THUMB_PX)})" if c.image else "" for c in cases])
    return frame


def _page_base(request: gr.Request | None) -> str:
    """The page's address as the browser sent it (the Referer of the event's request), or "" (a relative link)."""
    headers = getattr(request, "headers", None) or {}
    return headers.get("referer", "") if hasattr(headers, "get") else ""


def _must_show_a_run(cases) -> None:
    if not cases:
        raise gr.Error("no run is loaded: load one (or evaluate) first; the export writes the cases shown",
                       print_exception=False)


def build(demo: Demo, model_state: gr.State, session: gr.BrowserState | None = None, tabs: gr.Tabs | None = None,
          gallery_steps: list | None = None):
    """Lay out the tab; returns the page-load step: the session's runs and galleries, and the run and case
    a page address names (``?run=<run>&case=<query id>``, which also selects this tab when ``tabs`` is given).
    ``gallery_steps``, if given, gets the step that refreshes this tab's gallery picker (run when the
    Galleries tab adds or removes one)."""
    session = session if session is not None else gr.State(None)
    runs = demo.failure_runs.names(None)
    gr.HTML(GRID_CSS, padding=False)
    with gr.Row():
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Saved evaluation run (reasoning + direct)",
                          allow_custom_value=True, scale=3)  # the app names an unknown run itself
        load = gr.Button("Load run", scale=1)
    with gr.Accordion("Run a new evaluation with the model in use", open=False):
        with gr.Row():
            tasks = gr.Dropdown(world_task_names(), multiselect=True, label="World tasks (empty: all)")
            split = gr.Radio(["ind", "ood", "all"], value="all", label="Split")
            n = gr.Slider(2, 100, value=10, step=1, label="Queries per task and split")
            evaluate = gr.Button("Evaluate (both modes)", variant="primary")
        with gr.Row():
            galleries = gr.Dropdown(demo.gallery_names(None), value=None, scale=3, allow_custom_value=True,
                                    label="Or a gallery: a sample one or yours (Galleries tab); its queries with "
                                          "a right answer are ranked against its items")
            evaluate_g = gr.Button("Evaluate gallery (both modes)", variant="primary", scale=1)
    with gr.Row():
        outcome = gr.Dropdown([ALL, *OUTCOMES], value=ALL, label="Outcome")
        # its choices come with a run; an API call names a task before any run filled them (QA: refused)
        task = gr.Dropdown([ALL], value=ALL, label="Task", allow_custom_value=True)
        meta = gr.Dropdown([ALL, *META_TASKS], value=ALL, label="Meta-task")
        split_f = gr.Dropdown([ALL, "ind", "ood"], value=ALL, label="Split")
        tag = gr.Dropdown([ALL, *TAGS], value=ALL, label="Failure kind")
    with gr.Row(equal_height=True):
        search = gr.Textbox(label="Search query text, labels and rationales", scale=3,
                            placeholder="words that must all appear, then Enter (e.g. green square)")
        export = gr.Button("Export the cases shown (CSV + Parquet)", scale=1)
    summary = gr.Markdown("Load a saved run, or evaluate the model in use.", elem_id="failures-status")
    exported = gr.File(label="Exported cases", file_count="multiple", visible=False, elem_id="failures-export")
    table = gr.Dataframe(headers=["image", *GRID_COLUMNS], datatype=GRID_TYPES, interactive=False, max_height=880,
                         wrap=True, column_widths=GRID_WIDTHS, elem_id="failures-grid",
                         label="Cases (sort: a column's ⋮ menu; click a row to open the case)")
    link = gr.Textbox(label="Link to this case", interactive=False, buttons=["copy"], elem_id="failures-link",
                      placeholder="click a row of the grid")
    view = gr.HTML(elem_id="failures-case")
    case_id = gr.Textbox(visible=False, label="Case")  # the case shown (its query id); an API parameter
    with gr.Row(equal_height=True):
        attribute_btn = gr.Button("Shade this case's rationale by each part's contribution (leave one part out, "
                                  "with the model in use)", scale=3)
        attribute_status = gr.Markdown(elem_id="failures-attribute-status")
    attribution = gr.HTML(elem_id="failures-attribution")
    with gr.Accordion("P@1 per task and meta-task, direct vs reasoning (95% bootstrap intervals)", open=True):
        bars = gr.Plot(elem_id="failures-bars", show_label=False)
    with gr.Accordion("Cost: P@1 gain over direct vs generated tokens, every run and sampled rationales",
                      open=False) as cost_box:
        cost_plot = gr.Plot(elem_id="failures-cost", show_label=False)
    cases_state = gr.State([])
    shown_state = gr.State([])

    with gr.Accordion("Guided tours", open=True):
        tours = demo.tours
        with gr.Row():
            tour = gr.Dropdown([(t.title, t.id) for t in tours.values()], label="Tour", value=None,
                               allow_custom_value=True)  # the app names an unknown tour itself
            prev_b, next_b = gr.Button("Previous"), gr.Button("Next")
        tour_info = gr.Markdown(elem_id="tour-info")
        replay_btn = gr.Button("Replay this stop with the model in use (before / after)")
        replay_out = gr.Markdown(elem_id="tour-replay")
        tour_view = gr.HTML()
    tour_pos = gr.Number(1, precision=0, visible=False, label="Stop")  # the stop shown (1-based); an API parameter

    def shown_of(cases, outcome, task, meta_task, split, failure_kind, search):
        tasks = sorted({c.task for c in cases})
        if task not in (ALL, None, "", *tasks):
            raise gr.Error(f"task {shorten(str(task), 80)!r} is not in this run; its tasks: {', '.join(tasks)}",
                           print_exception=False)
        pick = lambda v: None if v in (ALL, None, "") else v  # noqa: E731
        shown = filter_cases(cases, outcome=pick(outcome), task=pick(task), meta_task=pick(meta_task),
                             split=pick(split), tag=pick(failure_kind))
        return search_cases(shown, search)

    def refresh(cases, outcome, task, meta_task, split, failure_kind, search=""):
        shown = shown_of(cases, outcome, task, meta_task, split, failure_kind, search)
        counts = {o: sum(c.outcome == o for c in cases) for o in OUTCOMES}
        found = f" matching {md_literal(shorten(search.strip(), 80))}" if (search or "").strip() else ""
        text = (f"{len(shown)} of {len(cases)} cases shown{found}. In the whole run: "
                + ", ".join(f"{o}: {k}" for o, k in counts.items()))
        return grid_frame(shown), text, shown

    filters = [outcome, task, meta, split_f, tag, search]

    def choices_of(cases):
        """The task picker's choices for a run's cases."""
        return gr.update(choices=[ALL, *sorted({c.task for c in cases})])

    def after_load(cases, run_name):
        """The run's P@1 bars and the split / meta-task pickers for its cases."""
        if not cases:
            return gr.skip(), gr.skip(), gr.skip()
        fig = p1_figure(p1_bars(cases), title=f"run {run_name}: {len(cases)} queries")
        metas = sorted({c.meta_task for c in cases if c.meta_task} | set(META_TASKS))
        return (fig, gr.update(choices=[ALL, *sorted({c.split for c in cases})]), gr.update(choices=[ALL, *metas]))

    @friendly
    def on_load(run, outcome, task, meta_task, split, failure_kind, search="", session_key=None,
                request: gr.Request = None):
        """A saved run's cases, filtered (``search``: words over query text, labels and rationales;
        ``session_key``: lets the session open its own gallery runs): (table, summary, task choices)."""
        cases = demo.failure_runs.load(run, session_of(session_key, request))
        df, text, shown = refresh(cases, outcome, task, meta_task, split, failure_kind, search)
        return cases, df, text, shown, choices_of(cases), "", "", "", ""

    @gpu
    @friendly
    def on_evaluate(tasks, split, queries_per_task, model_name, outcome, task, meta_task, split_filter,
                    failure_kind, search="", session_key=None, request: gr.Request = None, progress=gr.Progress()):
        """Evaluate the model in use on world tasks in both modes; saves a new run (the session's only when
        the model is) and shows its cases. ``session_key`` (optional) names the session."""
        key = session_of(session_key, request)
        name, cases = demo.run_evaluation(tasks, split, queries_per_task, model_name,
                                          progress=lambda mode, d, t: progress(d / max(t, 1), desc=f"{mode} mode"),
                                          session_key=key)
        df, text, shown = refresh(cases, outcome, task, meta_task, split_filter, failure_kind, search)
        whose = " (yours only: made with your model)" if demo.failure_runs.is_own(name) else ""
        return (cases, df, f"Saved as run **{name}**{whose}. {text}", shown, choices_of(cases),
                gr.update(choices=demo.failure_runs.names(key), value=name))

    @gpu
    @friendly
    def on_evaluate_gallery(gallery, model_name, outcome, task, meta_task, split_filter, failure_kind, search="",
                            session_key=None, request: gr.Request = None, progress=gr.Progress()):
        """Evaluate the model in use on a gallery's queries with a right answer, in both modes; saves a
        new run (a run of the session's own gallery is the session's only) and shows its cases."""
        key = session_of(session_key, request)
        name, cases = demo.failure_runs.evaluate_gallery(
            gallery, key, model_name, progress=lambda mode, d, t: progress(d / max(t, 1), desc=f"{mode} mode"))
        df, text, shown = refresh(cases, outcome, task, meta_task, split_filter, failure_kind, search)
        whose = " (yours only: made from your gallery or with your model)" if demo.failure_runs.is_own(name) else ""
        return (cases, df, f"Saved as run **{name}**{whose}. {text}", shown, choices_of(cases),
                gr.update(choices=demo.failure_runs.names(key), value=name))

    @friendly
    def on_export(run, outcome, task, meta_task, split, failure_kind, search="", session_key=None,
                  request: gr.Request = None):
        """The cases of a run that the filters and search keep, as a CSV and a Parquet file."""
        key = session_of(session_key, request)
        shown = shown_of(demo.failure_runs.load(run, key), outcome, task, meta_task, split, failure_kind, search)
        if not shown:
            raise gr.Error("no case matches the filters: nothing to export")
        paths = demo.failure_runs.export(run, shown, key)
        return gr.update(value=[str(p) for p in paths], visible=True)

    def on_select(cases, run, evt: gr.SelectData, request: gr.Request):
        """The clicked row's case (found by its id, so a sorted grid opens the right one) and its link."""
        row = evt.row_value or []
        case_id = row[-1] if row else None
        case = next((c for c in cases if c.query_id == case_id), None)
        if case is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return case_html(case), case_link(_page_base(request), run, case.query_id), case.query_id, ""

    @gpu
    @friendly
    def on_attribute(run, case, model_name, session_key=None, request: gr.Request = None):
        """Each sentence's and clause's contribution to the case's cosine with its right answer and its
        top-1 wrong candidate (leave-one-out, one batched forward, the model in use): (status, shading)."""
        if not case:
            raise gr.Error("open a case first: click a row of the grid")
        t0 = time.perf_counter()
        att = demo.failure_runs.attribute_case(run, case, session_of(session_key, request), model_name)
        line = (f"Case **{html.escape(case)}**: {counted(len(att.sentences), 'sentence')} and "
                f"{counted(len(att.clauses), 'clause')} "
                f"attributed with **{html.escape(demo.model(model_name).name)}** in {time.perf_counter() - t0:.1f} s.")
        return line, attribution_html(att)

    def galleries_of(session_key, current=None, request: gr.Request = None):
        """The galleries this session may evaluate: sample ones and its own (those with queries); the
        choice stays while it is one of them (QA: a removed gallery stayed picked, refused at Evaluate)."""
        key = session_of(session_key, request)
        names = [*demo.gallery_names(None), *(g["name"] for g in demo.own_galleries(key) if g["queries"])]
        return gr.update(choices=names, value=current if current in names else None)

    def on_page(run_name, session_key, request: gr.Request):
        """The session's runs and galleries; the run and case the page address names (``?run=&case=``)."""
        skip = gr.skip()
        key = session_of(session_key, request)
        runs_now = demo.failure_runs.names(key)
        lists = (gr.update(choices=runs_now, value=run_name if run_name in runs_now else runs_now[0] if runs_now
                           else None), galleries_of(session_key, request=request))
        select = (gr.Tabs(selected="failures"),) if tabs is not None else ()
        try:
            name, case_id = parse_case_link(dict(getattr(request, "query_params", None) or {}))
            if name is None:  # a plain visit: only the lists
                return (*lists, *(skip,) * 11, *((skip,) if tabs is not None else ()))
            cases = demo.failure_runs.load(name, key)
        except user_errors() as e:  # a bad link: one sentence in the status line, the tab still opens
            return (*lists, *(skip,) * 10, f"**The link does not open a run:** {html.escape(public_message(e))}",
                    *select)
        case, note = None, ""
        if case_id:
            try:
                case = demo.failure_runs.case(name, case_id, key)
            except user_errors() as e:
                note = f"**The link does not open a case:** {html.escape(public_message(e))}. "
        df, text, shown = refresh(cases, ALL, ALL, ALL, ALL, ALL, "")
        fig, split_choices, meta_choices = after_load(cases, name)
        opened = note or (f"Opened case **{html.escape(case.query_id)}** of run **{html.escape(name)}** from the "
                          f"link. " if case else f"Opened run **{html.escape(name)}** from the link. ")
        return (gr.update(choices=runs_now, value=name), lists[1], cases, df, shown, choices_of(cases),
                case_html(case) if case else "", case_link(_page_base(request), name, case.query_id) if case else "",
                case.query_id if case else "", fig, split_choices, meta_choices, opened + text, *select)

    def on_cost(run_name, session_key, request: gr.Request):
        """Every run this session sees, and the shipped sampling points, as gain vs tokens."""
        points = demo.failure_runs.cost_points(session_of(session_key, request))
        return cost_figure(points, highlight=run_name)

    @friendly
    def show_stop(tour_id, stop, asked: bool = False):
        """A tour's stop (clamped to the tour) and an empty replay line: the replay was of another stop.
        ``asked``: Next / Previous pressed, which with no tour chosen say so (they did nothing)."""
        if not tour_id:
            return ("*Pick a tour in the Tour list first: Next and Previous step through its stops.*" if asked
                    else ""), "", 1, ""
        stop = max(1, min(int(stop or 1), len(demo.tour(tour_id).stops)))
        t, stop, case, explanation = demo.tour_stop(tour_id, stop)
        head = f"### {html.escape(t.title)}\n{t.summary}\n\n**Stop {stop} of {len(t.stops)}: {t.stops[stop - 1].title}**"
        return head, case_html(case, explanation), stop, ""

    @gpu
    @friendly
    def on_replay(tour, stop, model_name):
        """A tour's stop (1-based) run again with the model in use, in both modes: a before/after table."""
        r = demo.replay_stop(tour, stop, model_name)
        return (f"| | direct rank | reasoning rank |\n|---|---:|---:|\n"
                f"| before ({html.escape(r['tour_model'])}, saved run) | {r['before_direct_rank']} | "
                f"{r['before_reason_rank']} |\n"
                f"| now (`{html.escape(r['model'])}`) | {r['direct_rank']} | {r['reason_rank']} |\n\n"
                f"Stop {r['stop']}. Rationale now: *{html.escape(r['rationale'])}*")

    private = {"api_visibility": "private"}  # UI-only events: not API endpoints
    # A failed request marks only the summary line with gradio's error badge: the table and pickers stay usable.
    # The named endpoints' outputs are (table, summary, task choices[, run]); the bars and the split and
    # meta-task pickers follow in a private step.
    loaded = [cases_state, table, summary, shown_state, task]
    follow = ([cases_state, run], [bars, split_f, meta])
    for event, kw in ((load.click, {"api_name": "load_run"}), (run.input, private)):
        event(on_load, [run, *filters, session], [*loaded, link, view, case_id, attribution], show_progress_on=summary,
              **kw).success(after_load, *follow, **private)
    evaluate.click(on_evaluate, [tasks, split, n, model_state, *filters, session], [*loaded, run], api_name="evaluate",
                   concurrency_id="model", show_progress_on=summary).success(after_load, *follow, **private)
    evaluate_g.click(on_evaluate_gallery, [galleries, model_state, *filters, session], [*loaded, run],
                     api_name="evaluate_gallery", concurrency_id="model",
                     show_progress_on=summary).success(after_load, *follow, **private)
    galleries.focus(galleries_of, [session, galleries], galleries, **private)  # galleries registered since the page loaded
    for f in filters[:-1]:
        f.change(refresh, [cases_state, *filters], [table, summary, shown_state], show_progress_on=summary,
                 **private)
    search.submit(refresh, [cases_state, *filters], [table, summary, shown_state], show_progress_on=summary,
                  **private)
    # The files of an earlier export go first: a refused export ("no case matches") must not leave them
    # on show as if they were its own.
    # The page exports the run it shows: none loaded yet, nothing (QA: it wrote the picker's run, unseen).
    export.click(lambda: gr.update(value=None, visible=False), None, exported, **private).then(
        _must_show_a_run, cases_state, None, show_progress_on=summary, **private).success(
        on_export, [run, *filters, session], exported, api_name="export_cases", show_progress_on=summary)
    table.select(on_select, [cases_state, run], [view, link, case_id, attribution], **private)
    cost_box.expand(on_cost, [run, session], cost_plot, **private)  # computed when opened: it reads every run
    attribute_btn.click(on_attribute, [run, case_id, model_state, session], [attribute_status, attribution],
                        api_name="attribute_case", concurrency_id="model", show_progress_on=attribute_status)
    replay_btn.click(on_replay, [tour, tour_pos, model_state], replay_out, api_name="replay_stop",
                     concurrency_id="model")
    stop_out = [tour_info, tour_view, tour_pos, replay_out]
    # The replay line is a progress target too: a new tour or stop clears its old table and any error badge.
    on_stop = {"show_progress_on": [tour_info, replay_out], **private}
    tour.change(lambda t: show_stop(t, 1), tour, stop_out, **on_stop)
    next_b.click(lambda t, p: show_stop(t, (p or 1) + 1, asked=True), [tour, tour_pos], stop_out, **on_stop)
    prev_b.click(lambda t, p: show_stop(t, (p or 1) - 1, asked=True), [tour, tour_pos], stop_out, **on_stop)

    if gallery_steps is not None:
        gallery_steps.append((galleries_of, [session, galleries], [galleries]))
    page_out = [run, galleries, cases_state, table, shown_state, task, view, link, case_id, bars, split_f, meta,
                summary]
    return on_page, [run, session], page_out + ([tabs] if tabs is not None else [])
