"""Failures tab: saved or new evaluation runs in both modes, filtered cases, and guided tours."""

from __future__ import annotations

import html

import gradio as gr

from rge_demo.analysis.failures import OUTCOMES, TAGS, cases_table, filter_cases, tag_case
from rge_demo.app.demo import Demo, world_task_names

from .common import friendly, gpu
from .render import STYLE, thumbnail

ALL = "all"


def _topk_html(topk: list[dict], target_id: str, title: str) -> str:
    rows = "".join(
        f'<tr{" class=target" if t["id"] == target_id else ""}><td>{i}</td><td>{html.escape(str(t.get("label") or t["id"]))}'
        f'</td><td>{float(t["score"]):+.3f}</td></tr>' for i, t in enumerate(topk, 1))
    return f'<p><b>{title}</b></p><table class="rge-hits"><tr><th>#</th><th>candidate</th><th>cosine</th></tr>{rows}</table>'


def case_html(c, explanation: str = "") -> str:
    img = (f'<img class="rge-thumb" style="width:126px;height:126px" src="{thumbnail(c.image)}">'
           if c.image else "")
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


def build(demo: Demo, model_state: gr.State, session: gr.BrowserState | None = None):
    runs = sorted(demo.saved_runs())
    with gr.Row():
        run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Saved evaluation run (reasoning + direct)",
                          allow_custom_value=True)  # the app names an unknown run itself
        load = gr.Button("Load run")
    with gr.Accordion("Run a new evaluation with the model in use", open=False):
        with gr.Row():
            tasks = gr.Dropdown(world_task_names(), multiselect=True, label="World tasks (empty: all)")
            split = gr.Radio(["ind", "ood", "all"], value="all", label="Split")
            n = gr.Slider(2, 100, value=10, step=1, label="Queries per task and split")
            evaluate = gr.Button("Evaluate (both modes)", variant="primary")
    with gr.Row():
        outcome = gr.Dropdown([ALL, *OUTCOMES], value=ALL, label="Outcome")
        task = gr.Dropdown([ALL], value=ALL, label="Task")
        meta = gr.Dropdown([ALL, "classification", "vqa", "retrieval", "grounding"], value=ALL, label="Meta-task")
        split_f = gr.Dropdown([ALL, "ind", "ood"], value=ALL, label="Split")
        tag = gr.Dropdown([ALL, *TAGS], value=ALL, label="Failure kind")
    summary = gr.Markdown("Load a saved run, or evaluate the model in use.", elem_id="failures-status")
    table = gr.Dataframe(interactive=False, max_height=320, wrap=True,
                         column_widths=["14%", "10%", "5%", "9%", "8%", "6%", "6%", "8%", "8%", "12%", "14%"])
    view = gr.HTML()
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

    def refresh(cases, outcome, task, meta_task, split, failure_kind):
        pick = lambda v: None if v == ALL else v  # noqa: E731
        shown = filter_cases(cases, outcome=pick(outcome), task=pick(task), meta_task=pick(meta_task),
                             split=pick(split), tag=pick(failure_kind))
        counts = {o: sum(c.outcome == o for c in cases) for o in OUTCOMES}
        text = f"{len(shown)} of {len(cases)} cases shown. " + ", ".join(f"{o}: {k}" for o, k in counts.items())
        return cases_table(shown), text, shown

    filters = [outcome, task, meta, split_f, tag]

    @friendly
    def on_load(run, outcome, task, meta_task, split, failure_kind):
        """A saved run's cases, filtered: (table, summary, task choices)."""
        cases = demo.load_cases(run)
        df, text, shown = refresh(cases, outcome, task, meta_task, split, failure_kind)
        return cases, df, text, shown, gr.update(choices=[ALL, *sorted({c.task for c in cases})])

    @gpu
    @friendly
    def on_evaluate(tasks, split, queries_per_task, model_name, outcome, task, meta_task, split_filter,
                    failure_kind, progress=gr.Progress()):
        """Evaluate the model in use on world tasks in both modes; saves a new run, shows its cases."""
        name, cases = demo.run_evaluation(tasks, split, queries_per_task, model_name,
                                          progress=lambda mode, d, t: progress(d / max(t, 1), desc=f"{mode} mode"))
        df, text, shown = refresh(cases, outcome, task, meta_task, split_filter, failure_kind)
        return (cases, df, f"Saved as run **{name}**. {text}", shown,
                gr.update(choices=[ALL, *sorted({c.task for c in cases})]),
                gr.update(choices=sorted(demo.saved_runs()), value=name))

    def on_select(shown, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return case_html(shown[row]) if 0 <= row < len(shown) else ""

    @friendly
    def show_stop(tour_id, stop):
        """A tour's stop (clamped to the tour) and an empty replay line: the replay was of another stop."""
        if not tour_id:
            return "", "", 1, ""
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
    load.click(on_load, [run, *filters], [cases_state, table, summary, shown_state, task], api_name="load_run",
               show_progress_on=summary)
    evaluate.click(on_evaluate, [tasks, split, n, model_state, *filters],
                   [cases_state, table, summary, shown_state, task, run], api_name="evaluate", concurrency_id="model",
                   show_progress_on=summary)
    for f in filters:
        f.change(refresh, [cases_state, *filters], [table, summary, shown_state], show_progress_on=summary,
                 **private)
    table.select(on_select, shown_state, view, **private)
    replay_btn.click(on_replay, [tour, tour_pos, model_state], replay_out, api_name="replay_stop",
                     concurrency_id="model")
    stop_out = [tour_info, tour_view, tour_pos, replay_out]
    # The replay line is a progress target too: a new tour or stop clears its old table and any error badge.
    on_stop = {"show_progress_on": [tour_info, replay_out], **private}
    tour.change(lambda t: show_stop(t, 1), tour, stop_out, **on_stop)
    next_b.click(lambda t, p: show_stop(t, (p or 1) + 1), [tour, tour_pos], stop_out, **on_stop)
    prev_b.click(lambda t, p: show_stop(t, (p or 1) - 1), [tour, tour_pos], stop_out, **on_stop)
