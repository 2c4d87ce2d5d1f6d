"""Train tab: upload pairs -> validate -> build a dataset -> draft rationales -> background job -> result.

Wiring only: every action is a method of :class:`rge_demo.training.workbench.Workbench`.
"""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

from rge_demo.service import Demo
from rge_demo.training.workbench import LAUNCH_STAGES, PROBLEM_COLUMNS, loss_figure

from .common import friendly, gpu

log = logging.getLogger(__name__)

TICK_SECONDS = 2.0
LOG_LINES = 10
HELP = """Fine-tune a model on your own query/target pairs with the joint RGE objective (LM loss on the
oracle rationales + InfoNCE on embeddings after self-generated rationales), in a background worker.
Format: a `manifest.jsonl` / `.csv` with `query_text`, `query_image`, `target_text`, `target_image`,
`rationale`, `task`, ... plus its images (one zip, or a manifest and a zip). New here? **Try the sample upload.**"""
STAGE_HELP = ("rge: joint LM + contrastive (needs a rationale on every pair) · cold-start: LM loss only · "
              "baseline: contrastive on direct embeddings, no rationales")


def _last_lines(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]  # tqdm's carriage returns leave blank lines
    return "\n".join(lines[-LOG_LINES:])


def _default_base(demo: Demo, choices: list[str]) -> str | None:
    if "rge-micro" in choices:
        return "rge-micro"
    try:
        spec = demo.manager.resolve(demo.default_model)
        return spec.name if spec.kind != "hub" and spec.available else (choices[0] if choices else None)
    except Exception:  # an unusable default model: the Models tab says why
        return choices[0] if choices else None


def build(demo: Demo, model_state: gr.State) -> None:
    bench = demo.workbench
    gr.Markdown(HELP)

    # (a) upload and validation ------------------------------------------------------------------
    gr.Markdown("### 1. Upload and validate")
    with gr.Row():
        manifest = gr.File(label="Manifest (.jsonl / .csv)", file_types=[".jsonl", ".csv"], type="filepath")
        archive = gr.File(label="Zip: images, or manifest + images", file_types=[".zip"], type="filepath")
    with gr.Row():
        validate_btn = gr.Button("Validate upload", variant="primary")
        sample_btn = gr.Button("Try the sample upload")
    upload_id = gr.Textbox(label="Upload", interactive=False, max_lines=1)
    summary = gr.Markdown()
    with gr.Row():
        problems = gr.Dataframe(headers=PROBLEM_COLUMNS, label="Problems (line, field, problem)", interactive=False,
                                max_height=260, wrap=True, scale=3)
        counts = gr.Dataframe(headers=["task", "valid pairs"], label="Valid pairs per task", interactive=False,
                              scale=1)
    with gr.Row():
        skip = gr.Checkbox(label="Skip the listed rows (build from the valid rows only)", value=False)
        build_btn = gr.Button("Build dataset", variant="primary")
    report_state = gr.State(None)

    # (b) rationales -----------------------------------------------------------------------------
    gr.Markdown("### 2. Rationales")
    datasets = bench.datasets()
    with gr.Row():
        dataset = gr.Dropdown(datasets, value=datasets[0] if datasets else None, label="Dataset (a built upload)")
        draft_with = gr.Radio(["templates", "the model in use"], value="templates", label="Draft with")
        draft_btn = gr.Button("Draft missing rationales")
    dataset_info = gr.Markdown()
    drafts = gr.Dataframe(headers=["row", "task", "query_text", "target", "rationale"], interactive=True,
                          static_columns=[0, 1, 2, 3], wrap=True, max_height=320,
                          label="Drafts: edit the rationale column, then save (each should end in 'answer <target>')")
    save_btn = gr.Button("Save rationales into the dataset")

    # (c) launch ---------------------------------------------------------------------------------
    gr.Markdown("### 3. Launch a training job")
    bases = bench.base_models()
    with gr.Row():
        base = gr.Dropdown(bases, value=_default_base(demo, bases), allow_custom_value=True,
                           label="Base model (registry name or local folder)")
        stage = gr.Radio(list(LAUNCH_STAGES), value="rge", label="Stage", info=STAGE_HELP)
        job_name = gr.Textbox(label="Job name (optional)", max_lines=1)
    with gr.Row():
        steps = gr.Number(20, precision=0, label="Steps", minimum=1)
        batch = gr.Number(8, precision=0, label="Batch size", minimum=1)
        lr = gr.Number(1e-4, label="Learning rate")
        a_lm = gr.Number(0.1, label="a_lm (LM weight)")
        a_con = gr.Number(1.0, label="a_con (contrastive weight)")
        temperature = gr.Number(0.03, label="Temperature")
    with gr.Row():
        max_new = gr.Number(32, precision=0, label="Max new tokens (rationale budget)", minimum=1)
        val_share = gr.Slider(0.0, 0.9, value=0.2, step=0.05, label="Validation share (held out for before/after)")
        lora = gr.Checkbox(label="LoRA (q/k/v/o adapters instead of a full fine-tune)", value=False)
        launch_btn = gr.Button("Launch", variant="primary")

    # (d) jobs -----------------------------------------------------------------------------------
    gr.Markdown("### 4. Jobs (one runs at a time; the others wait in the queue)")
    jobs = gr.Dataframe(value=bench.jobs_table, label="Jobs", interactive=False, max_height=220, wrap=True)
    ids = bench.job_ids()
    with gr.Row():
        job = gr.Dropdown(ids, value=ids[-1] if ids else None, label="Job", scale=3)
        refresh_btn = gr.Button("Refresh", scale=0)
        cancel_btn = gr.Button("Cancel", variant="stop", scale=0)
        resume_btn = gr.Button("Resume", scale=0)
    status = gr.Markdown()
    with gr.Row():
        with gr.Column(scale=3):
            curve = gr.Plot(label="Loss curves")
        with gr.Column(scale=2):
            samples = gr.Dataframe(headers=["step", "rationale"], label="Last generated rationales",
                                   interactive=False, wrap=True, max_height=320)
    log_tail = gr.Textbox(label="Log (last lines)", lines=LOG_LINES, max_lines=LOG_LINES, interactive=False)
    timer = gr.Timer(TICK_SECONDS)
    seen = gr.State(None)  # what the page shows, so an unchanged tick redraws nothing

    # (e) results --------------------------------------------------------------------------------
    gr.Markdown("### 5. Results")
    with gr.Row():
        results_btn = gr.Button("Before / after P@1 on the validation share")
        use_btn = gr.Button("Load in Compare (use in every tab)", variant="primary")
    results = gr.Dataframe(headers=["model", "mode", "p@1", "n", "split"], interactive=False)
    use_info = gr.Markdown()

    # -- callbacks -------------------------------------------------------------------------------
    def report_outputs(folder, report):
        bad, per_task = bench.report_tables(report)
        head = ("**Valid.** " if report.ok else "**Problems found.** ") + report.summary()
        return folder.name, report, head, bad, per_task

    @friendly
    def on_validate(manifest_path, archive_path):
        return report_outputs(*bench.new_upload(manifest_path, archive_path))

    @friendly
    def on_sample():
        return report_outputs(*bench.sample_upload())

    @friendly
    def on_build(upload, report, skip_bad):
        pairs = bench.build(upload, report, skip_bad)
        name = pairs.parent.parent.name
        return gr.update(choices=bench.datasets(), value=name), bench.dataset_summary(name)

    @friendly
    def on_dataset(name):
        return bench.dataset_summary(name) if name else ""

    @gpu
    @friendly
    def on_draft(name, how, model_name):
        encoder = demo.model(model_name).encoder if how == "the model in use" else None
        table = bench.drafts(name, encoder)
        if not len(table):
            gr.Info("every pair already has a rationale")
        return table

    @friendly
    def on_save(name, table):
        bench.save_drafts(name, table)
        gr.Info("rationales saved into the dataset")
        return bench.dataset_summary(name), bench.drafts(name).iloc[0:0]

    @friendly
    def on_launch(name, base_model, stg, n_steps, bs, rate, w_lm, w_con, temp, use_lora, budget, share, title):
        new = bench.launch(bench.pairs_path(name), base_model, stg, n_steps, bs, rate, w_lm, w_con, temp,
                           bool(use_lora), budget, share, title)
        gr.Info(f"job {new.id} {new.status}")
        return (gr.update(choices=bench.job_ids(), value=new.id), bench.jobs_table(), *show(new.id))

    def show(job_id):
        """Status line, loss curve, samples and log tail of a job."""
        if not job_id:
            return "No job selected.", loss_figure(None), pd.DataFrame(columns=["step", "rationale"]), ""
        p = bench.progress(job_id)
        return (bench.status_line(p), loss_figure(p["metrics"], p["name"]),
                pd.DataFrame(p["samples"], columns=["step", "rationale"]), _last_lines(p["log_tail"]))

    @friendly
    def on_show(job_id):
        return (bench.jobs_table(), *show(job_id))

    def on_tick(job_id, last):
        """Every 2 s: redraw only what changed (a stale picker or a vanished job must not raise)."""
        try:
            table = bench.jobs_table()
            ids_now = list(table["id"])
            if job_id not in ids_now:
                job_id = ids_now[-1] if ids_now else None
            p = bench.progress(job_id) if job_id else None
        except Exception:
            log.exception("training progress tick failed")
            return (gr.skip(),) * 7
        key_jobs = tuple(zip(table["id"], table["status"], table["attempts"]))
        key_job = (job_id, p["status"], p["step"], len(_last_lines(p["log_tail"]))) if p else None
        last = last or (None, None)
        jobs_out = table if key_jobs != last[0] else gr.skip()
        pick_out = gr.update(choices=ids_now, value=job_id) if key_jobs != last[0] else gr.skip()
        if key_job == last[1]:
            detail = (gr.skip(),) * 4
        elif p is None:
            detail = show(None)
        else:
            detail = (bench.status_line(p), loss_figure(p["metrics"], p["name"]),
                      pd.DataFrame(p["samples"], columns=["step", "rationale"]), _last_lines(p["log_tail"]))
        return (jobs_out, pick_out, *detail, (key_jobs, key_job))

    @friendly
    def on_cancel(job_id):
        gr.Info(f"job {job_id}: {bench.cancel(job_id).status}")
        return (bench.jobs_table(), *show(job_id))

    @friendly
    def on_resume(job_id):
        gr.Info(f"job {job_id}: {bench.resume(job_id).status}")
        return (bench.jobs_table(), *show(job_id))

    @friendly
    def on_results(job_id, progress=gr.Progress()):
        progress(0.1, desc="evaluating the base and the trained model in both modes")
        return bench.results(job_id)

    @friendly
    def on_use(job_id, progress=gr.Progress()):
        name = bench.register_result(job_id)
        progress(0.2, desc=f"loading {name}")
        demo.manager.load(name)
        progress(0.5, desc="embedding the galleries")
        demo.warm(name)
        return name, (f"**{name}** is now the model in use in every tab of this session "
                      "(open Compare to try it; the Models tab lists it).")

    detail_out = [status, curve, samples, log_tail]
    report_out = [upload_id, report_state, summary, problems, counts]
    validate_btn.click(on_validate, [manifest, archive], report_out, api_name="validate_upload")
    sample_btn.click(on_sample, None, report_out, api_name="sample_upload")
    build_btn.click(on_build, [upload_id, report_state, skip], [dataset, dataset_info], api_name="build_dataset")
    dataset.change(on_dataset, dataset, dataset_info)
    draft_btn.click(on_draft, [dataset, draft_with, model_state], drafts, api_name="draft_rationales",
                    concurrency_id="model")
    save_btn.click(on_save, [dataset, drafts], [dataset_info, drafts], api_name="save_rationales")
    launch_btn.click(on_launch, [dataset, base, stage, steps, batch, lr, a_lm, a_con, temperature, lora, max_new,
                                 val_share, job_name], [job, jobs, *detail_out], api_name="launch_training")
    refresh_btn.click(on_show, job, [jobs, *detail_out], api_name="training_progress")
    job.input(on_show, job, [jobs, *detail_out])
    timer.tick(on_tick, [job, seen], [jobs, job, *detail_out, seen], show_progress="hidden",
               concurrency_limit=None, api_visibility="private")
    cancel_btn.click(on_cancel, job, [jobs, *detail_out], api_name="cancel_training")
    resume_btn.click(on_resume, job, [jobs, *detail_out], api_name="resume_training")
    results_btn.click(on_results, job, results, api_name="training_results", concurrency_id="model")
    use_btn.click(on_use, job, [model_state, use_info], api_name="use_trained_model", concurrency_id="model")
