"""Train tab: upload pairs -> validate -> build a dataset version -> draft rationales -> background job -> result.

Wiring only: every action is a method of :class:`rge_demo.app.workbench.Workbench`, called with the
browser's session key (kept in ``gr.BrowserState``; an API client may pass its own ``session_key``,
else its connection is its session). A page reload shows the session's last upload, its dataset
versions and its jobs again.
"""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

from rge_demo.app.sessions import is_key, new_key, session_key
from rge_demo.app.workbench import COUNT_COLUMNS, DRAFT_COLUMNS, LAUNCH_STAGES, PROBLEM_COLUMNS, loss_figure
from rge_demo.app.demo import Demo
from rge_demo.app.jobs import JOB_COLUMNS

from .common import friendly, gpu

log = logging.getLogger(__name__)

TICK_SECONDS = 2.0
RESULT_COLUMNS = ["model", "mode", "p@1", "n", "split"]  # the before / after table's (JobQueue.results)
LOG_LINES = 10
HELP = """Fine-tune a model on your own query/target pairs with the joint RGE objective (LM loss on the
oracle rationales + InfoNCE on embeddings after self-generated rationales), in a background worker.
Format: a `manifest.jsonl` / `.csv` with `query_text`, `query_image`, `target_text`, `target_image`,
`rationale`, `task`, ... plus its images (one zip, or a manifest and a zip). New here? **Try the sample upload.**"""
STAGE_HELP = ("rge: joint LM + contrastive (needs a rationale on every pair) · cold-start: LM loss only · "
              "baseline: contrastive on direct embeddings, no rationales · eg-rl: Embed-RL's Reasoner trained by "
              "GRPO on a frozen copy of the base model's retrieval reward (base: a trained RGE model)")


def _last_lines(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]  # tqdm's carriage returns leave blank lines
    return "\n".join(lines[-LOG_LINES:])


def _default_base(demo: Demo, choices: list[str]) -> str | None:
    if "rge-micro" in choices:
        return "rge-micro"
    default = next((c for c in choices if c == demo.default_model), None)
    return default or (choices[0] if choices else None)


def session_state(demo: Demo) -> gr.BrowserState:
    """The per-browser session key (the owner of its uploads, datasets and jobs); made on the first page load."""
    return gr.BrowserState(None, storage_key="rge-demo-session", secret=demo.workbench.browser_secret)


def session_of(browser_key, request: gr.Request | None) -> str:
    """The session key of a request: the browser's, else (an API client that sent none) its connection's."""
    return session_key(browser_key, getattr(request, "session_hash", None))


def build(demo: Demo, model_state: gr.State, session: gr.BrowserState | None = None):
    """Lay out the tab; returns (fn, inputs, outputs) for the page's load event (the session's state back)."""
    bench = demo.workbench
    if session is None:
        session = session_state(demo)
    gr.Markdown(HELP)

    # (a) upload and validation ------------------------------------------------------------------
    gr.Markdown("### 1. Upload and validate")
    with gr.Row():
        manifest = gr.File(label="Manifest (.jsonl / .csv)", file_types=[".jsonl", ".csv"], type="filepath",
                           elem_id="train-manifest")
        archive = gr.File(label="Zip: images, or manifest + images", file_types=[".zip"], type="filepath",
                          elem_id="train-zip")
    with gr.Row():
        validate_btn = gr.Button("Validate upload", variant="primary")
        sample_btn = gr.Button("Try the sample upload")
    upload_id = gr.Textbox(label="Upload", interactive=False, max_lines=1)
    summary = gr.Markdown()
    with gr.Row():
        problems = gr.Dataframe(headers=PROBLEM_COLUMNS, label="Problems (line, field, problem)", interactive=False,
                                max_height=260, wrap=True, scale=3, column_widths=["8%", "16%", "76%"])
        counts = gr.Dataframe(headers=COUNT_COLUMNS, label="Valid pairs per task", interactive=False, scale=1)
    with gr.Row():
        skip = gr.Checkbox(label="Skip the listed rows (build from the valid rows only)", value=False)
        build_btn = gr.Button("Build dataset", variant="primary")
    report_state = gr.State(None)

    # (b) rationales -----------------------------------------------------------------------------
    gr.Markdown("### 2. Rationales")
    with gr.Row():
        # allow_custom_value: the workbench checks a dataset / job id itself (unknown, or another session's)
        dataset = gr.Dropdown([], value=None, allow_custom_value=True, scale=3, label="Dataset",
                              info="a version of a built upload; every save makes a new one")
        draft_with = gr.Radio(["templates", "the model in use"], value="templates", label="Draft with", scale=2)
        draft_btn = gr.Button("Draft missing rationales", scale=1)
    dataset_info = gr.Markdown()
    drafts = gr.Dataframe(headers=DRAFT_COLUMNS, interactive=True,
                          static_columns=[0, 1, 2, 3], wrap=True, max_height=320,
                          column_widths=["6%", "10%", "30%", "14%", "40%"],  # the rationale is what one edits
                          label="Drafts: edit the rationale column, then save (each should end in 'answer <target>')")
    save_btn = gr.Button("Save rationales into the dataset (a new version)")

    # (c) launch ---------------------------------------------------------------------------------
    gr.Markdown("### 3. Launch a training job")
    with gr.Row():
        base = gr.Dropdown([], value=None, allow_custom_value=True,
                           label="Base model (registry name, or a folder under RGE_MODEL_ROOTS)")
        stage = gr.Radio(list(LAUNCH_STAGES), value="rge", label="Stage", info=STAGE_HELP)
        job_name = gr.Textbox(label="Job name (optional)", max_lines=1)
    with gr.Row():
        steps = gr.Number(20, precision=0, label="Steps")  # the workbench checks ranges, naming the field
        batch = gr.Number(8, precision=0, label="Batch size")
        lr = gr.Number(1e-4, label="Learning rate")
        a_lm = gr.Number(0.1, label="a_lm (LM weight)")
        a_con = gr.Number(1.0, label="a_con (contrastive weight)")
        temperature = gr.Number(0.03, label="Temperature")
    with gr.Row():
        max_new = gr.Number(32, precision=0, label="Max new tokens (rationale budget)")
        val_share = gr.Slider(0.0, 0.9, value=0.2, step=0.05, label="Validation share (held out for before/after)")
        lora = gr.Checkbox(label="LoRA (q/k/v/o adapters instead of a full fine-tune)", value=False)
        launch_btn = gr.Button("Launch", variant="primary")

    # (d) jobs -----------------------------------------------------------------------------------
    gr.Markdown("### 4. Jobs (one runs at a time; the others wait in the queue)")
    jobs = gr.Dataframe(label="Jobs (this browser's, newest first)", interactive=False, max_height=300, wrap=True,
                        headers=JOB_COLUMNS, column_widths=["22%", "16%", "16%", "8%", "8%", "12%", "18%"])
    with gr.Row():
        job = gr.Dropdown([], value=None, label="Job", scale=3, allow_custom_value=True)
        refresh_btn = gr.Button("Refresh", scale=0)
        cancel_btn = gr.Button("Cancel", variant="stop", scale=0)
        resume_btn = gr.Button("Resume", scale=0)
    status = gr.Markdown()
    with gr.Row():
        with gr.Column(scale=3):
            curve = gr.Plot(label="Loss curves")
        with gr.Column(scale=2):
            samples = gr.Dataframe(headers=["step", "rationale"], label="Last generated rationales",
                                   interactive=False, wrap=True, max_height=320, column_widths=["16%", "84%"])
    log_tail = gr.Textbox(label="Log (last lines)", lines=LOG_LINES, max_lines=LOG_LINES, interactive=False)
    timer = gr.Timer(TICK_SECONDS)
    seen = gr.State(None)  # what the page shows, so an unchanged tick redraws nothing

    # (e) results --------------------------------------------------------------------------------
    gr.Markdown("### 5. Results")
    with gr.Row():
        results_btn = gr.Button("Before / after P@1 on the validation share")
        use_btn = gr.Button("Load in Compare (use in every tab)", variant="primary")
    results = gr.Dataframe(headers=RESULT_COLUMNS, interactive=False)
    use_info = gr.Markdown()

    # -- callbacks (each takes the browser's session key first) ---------------------------------
    def report_outputs(folder, report):
        bad, per_task = bench.report_tables(report)
        head = ("**Valid.** " if report.ok else "**Problems found.** ") + report.summary()
        return folder.name, report, head, bad, per_task

    def dataset_update(key, value=None):
        choices = bench.dataset_choices(key)
        return gr.update(choices=choices, value=value or (choices[0][1] if choices else None))

    def on_page_load(session_key, request: gr.Request):
        """A new browser gets a key; a known one gets its last upload, dataset versions and jobs back."""
        key = session_key if is_key(session_key) else new_key()
        try:
            r = bench.restore(key)
            bases = bench.base_models(key)
        except Exception:
            log.exception("restoring the Train tab failed")
            return (key, *(gr.skip(),) * 9)
        head = ("**Valid.** " if r["ok"] else "**Problems found.** ") + r["summary"] if r["upload"] else ""
        return (key, r["upload"] or "", head, r["problems"], r["counts"],
                gr.update(choices=r["datasets"], value=r["dataset"]),
                bench.dataset_summary(key, r["dataset"]) if r["dataset"] else "",
                r["jobs"], gr.update(choices=list(r["jobs"]["id"]), value=r["job"]),
                gr.update(choices=bases, value=_default_base(demo, bases)))

    def forget_upload():
        """A new upload is being validated: the page drops the one it showed, so a validation that fails
        leaves no upload for Build (which then says so) instead of the previous one."""
        return "", None, "", pd.DataFrame(columns=PROBLEM_COLUMNS), pd.DataFrame(columns=COUNT_COLUMNS)

    @friendly
    def on_validate(session_key, manifest_path, archive_path, request: gr.Request):
        return report_outputs(*bench.new_upload(session_of(session_key, request), manifest_path, archive_path))

    @friendly
    def on_sample(session_key, request: gr.Request):
        return report_outputs(*bench.sample_upload(session_of(session_key, request)))

    @friendly
    def on_build(session_key, upload, report, skip_bad, request: gr.Request):
        key = session_of(session_key, request)
        version = bench.build(key, upload, report, skip_bad)
        return dataset_update(key, version.id), bench.dataset_summary(key, version.id)

    @friendly
    def on_dataset(session_key, name, request: gr.Request):
        return bench.dataset_summary(session_of(session_key, request), name) if name else ""

    @gpu
    @friendly
    def on_draft(session_key, dataset, draft_with, model_name, request: gr.Request):
        key = session_of(session_key, request)
        encoder = demo.model(model_name).encoder if draft_with == "the model in use" else None
        table = bench.drafts(key, dataset, encoder)
        if not len(table):
            gr.Info("every pair already has a rationale")
        return table

    @friendly
    def on_save(session_key, dataset, drafts, request: gr.Request):
        key = session_of(session_key, request)
        version = bench.save_drafts(key, dataset, drafts)
        gr.Info(f"rationales saved as {version.id}" if version.id != dataset else "nothing changed")
        if rows := bench.answerless(drafts):
            gr.Warning(f"row(s) {', '.join(map(str, rows[:10]))}{' ...' if len(rows) > 10 else ''}: the rationale "
                       "does not end in 'answer <target>', the form the <emb> after it learns to read; edit and "
                       "save again, or keep it as it is")
        return dataset_update(key, version.id), bench.dataset_summary(key, version.id), \
            pd.DataFrame(columns=DRAFT_COLUMNS)

    @friendly
    def on_launch(session_key, dataset, base_model, stage, steps, batch_size, lr, a_lm, a_con, temperature, lora,
                  max_new_tokens, val_share, job_name, request: gr.Request):
        key = session_of(session_key, request)
        new = bench.launch(key, dataset, base_model, stage, steps, batch_size, lr, a_lm, a_con, temperature, bool(lora),
                           max_new_tokens, val_share, job_name)
        gr.Info(f"job {new.id} {new.status}")
        return (gr.update(choices=bench.job_ids(key), value=new.id), bench.jobs_table(key), *show(key, new.id))

    def show(key, job_id):
        """Status line, loss curve, samples and log tail of a job."""
        return detail(bench.progress(key, job_id) if job_id else None)

    def detail(p):
        """Status line, loss curve, samples and log tail of a progress dict (None: no job)."""
        if p is None:
            return "No job selected.", loss_figure(None), bench.samples_table(None), ""
        return (bench.status_line(p), loss_figure(p["metrics"], p["name"]), bench.samples_table(p),
                _last_lines(p["log_tail"]))

    @friendly
    def on_show(session_key, job_id, request: gr.Request):
        key = session_of(session_key, request)
        return (bench.jobs_table(key), *show(key, job_id))

    def on_tick(session_key, job_id, last, request: gr.Request):
        """Every 2 s: redraw only what changed (a stale picker or a vanished job must not raise)."""
        try:
            key = session_of(session_key, request)
            table = bench.jobs_table(key)
            ids_now = list(table["id"])
            picked = job_id
            if job_id not in ids_now:
                job_id = ids_now[-1] if ids_now else None
            p = bench.progress(key, job_id) if job_id else None
        except Exception:
            log.debug("training progress tick skipped", exc_info=True)
            return (gr.skip(),) * 7
        key_jobs = tuple(zip(table["id"], table["status"], table["attempts"]))
        key_job = (job_id, p["status"], p["step"], len(_last_lines(p["log_tail"]))) if p else None
        last = last or (None, None)
        jobs_out = table if key_jobs != last[0] else gr.skip()
        # The picker's value is set only when its job vanished: a tick that read the picker just before a
        # Launch returned would otherwise put the previous job back in place of the new one.
        if job_id != picked:
            pick_out = gr.update(choices=ids_now, value=job_id)
        else:
            pick_out = gr.update(choices=ids_now) if key_jobs != last[0] else gr.skip()
        shown = (gr.skip(),) * 4 if key_job == last[1] else detail(p)
        return (jobs_out, pick_out, *shown, (key_jobs, key_job))

    @friendly
    def on_cancel(session_key, job_id, request: gr.Request):
        key = session_of(session_key, request)
        gr.Info(f"job {job_id}: {bench.cancel(key, job_id).status}")
        return (bench.jobs_table(key), *show(key, job_id))

    @friendly
    def on_resume(session_key, job_id, request: gr.Request):
        key = session_of(session_key, request)
        gr.Info(f"job {job_id}: {bench.resume(key, job_id).status}")
        return (bench.jobs_table(key), *show(key, job_id))

    @friendly
    def on_results(session_key, job_id, request: gr.Request, progress=gr.Progress()):
        progress(0.1, desc="evaluating the base and the trained model in both modes")
        return bench.results(session_of(session_key, request), job_id)

    @friendly
    def on_use(session_key, job_id, request: gr.Request, progress=gr.Progress()):
        name = bench.register_result(session_of(session_key, request), job_id)
        progress(0.2, desc=f"loading {name}")
        demo.model(name)
        progress(0.5, desc="embedding the galleries")
        demo.warm(name)
        return name, (f"**{name}** is now the model in use in every tab of this session "
                      "(open Compare to try it; the Models tab lists it for this browser only).")

    detail_out = [status, curve, samples, log_tail]
    report_out = [upload_id, report_state, summary, problems, counts]
    # A failed request marks only a message line with gradio's error badge (tables and pickers stay usable).
    forget = dict(fn=forget_upload, inputs=None, outputs=report_out, show_progress="hidden", concurrency_limit=None,
                  api_visibility="private")
    validate_btn.click(**forget).then(on_validate, [session, manifest, archive], report_out, api_name="validate_upload",
                                      show_progress_on=summary)
    sample_btn.click(**forget).then(on_sample, session, report_out, api_name="sample_upload", show_progress_on=summary)
    build_btn.click(on_build, [session, upload_id, report_state, skip], [dataset, dataset_info],
                    api_name="build_dataset", show_progress_on=dataset_info)
    dataset.change(on_dataset, [session, dataset], dataset_info, api_visibility="private")
    draft_btn.click(on_draft, [session, dataset, draft_with, model_state], drafts, api_name="draft_rationales",
                    concurrency_id="model")
    save_btn.click(on_save, [session, dataset, drafts], [dataset, dataset_info, drafts], api_name="save_rationales",
                   show_progress_on=dataset_info)
    launch_btn.click(on_launch, [session, dataset, base, stage, steps, batch, lr, a_lm, a_con, temperature, lora,
                                 max_new, val_share, job_name], [job, jobs, *detail_out], api_name="launch_training",
                     show_progress_on=status)
    refresh_btn.click(on_show, [session, job], [jobs, *detail_out], api_name="training_progress",
                      show_progress_on=status)
    job.input(on_show, [session, job], [jobs, *detail_out], api_visibility="private", show_progress_on=status)
    timer.tick(on_tick, [session, job, seen], [jobs, job, *detail_out, seen], show_progress="hidden",
               concurrency_limit=None, api_visibility="private")
    cancel_btn.click(on_cancel, [session, job], [jobs, *detail_out], api_name="cancel_training",
                     show_progress_on=status)
    resume_btn.click(on_resume, [session, job], [jobs, *detail_out], api_name="resume_training",
                     show_progress_on=status)
    results_btn.click(on_results, [session, job], results, api_name="training_results", concurrency_id="model")
    # The table is one job's: another job picked (or launched) takes it off (QA: a job's numbers under another)
    job.change(lambda: pd.DataFrame(columns=RESULT_COLUMNS), None, results, show_progress="hidden",
               api_visibility="private")
    use_btn.click(on_use, [session, job], [model_state, use_info], api_name="use_trained_model",
                  concurrency_id="model", show_progress_on=use_info)
    return on_page_load, [session], [session, upload_id, summary, problems, counts, dataset, dataset_info, jobs, job,
                                     base]
