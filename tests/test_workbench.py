"""The Train tab's service (rge_demo.app.workbench) end to end on the tiny model, and the tab's wiring."""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import threading
import time

import gradio as gr
import pandas as pd
import pytest

from rge_demo.app.datasets import DatasetError
from rge_demo.app.sessions import new_key, owner_id
from rge_demo.app.workbench import Workbench, WorkbenchError, loss_figure
from rge_demo.config import Settings
from rge_demo.data.upload import UploadError
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.models.loading import ModelError
from rge_demo.models.manager import ModelManager, default_specs
from rge_demo.training.data import load_pairs
from rge_demo.training.worker import JobError

KEY, OTHER = new_key(), new_key()


def manager_for(tmp_path, tiny_dir) -> ModelManager:
    manager = ModelManager(Settings(cache_dir=tmp_path / "cache", model=str(tiny_dir), device="cpu", model_roots=(tmp_path,)),
                           specs=default_specs())
    manager.register(tiny_dir, name="tiny")  # shared: registered before any session spoke
    return manager


@pytest.fixture()
def bench(tmp_path, tiny_dir):
    wb = Workbench(None, manager_for(tmp_path, tiny_dir), background=False)
    yield wb
    wb.close()


@pytest.fixture()
def idle_bench(tmp_path, tiny_dir):
    """No job ever starts (max_running 0): for what happens around a job, not in it."""
    wb = Workbench(tmp_path / "jobs", manager_for(tmp_path, tiny_dir), background=False, max_running=0)
    yield wb
    wb.close()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sample_upload_to_trained_model_in_the_registry(bench, tmp_path, tiny_dir):
    folder, report = bench.sample_upload(KEY)
    assert report.ok and report.task_counts == {"count": 20, "ground": 20}
    assert folder.parent == tmp_path / "cache" / "jobs" / "uploads"
    again, _ = bench.sample_upload(KEY)
    assert again != folder  # every upload gets its own folder

    v1 = bench.build(KEY, folder.name, report)
    assert v1.id == f"{folder.name}/v1" and v1.path == folder / "data" / "v1.jsonl"
    assert bench.datasets(KEY) == [v1.id]
    assert "20 without a rationale" in bench.dataset_summary(KEY, v1.id)
    with pytest.raises(WorkbenchError, match="20 of 40 pairs .* have no rationale"):
        bench.launch(KEY, v1.id, "tiny", "rge", 2, 4, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.2, "too early")

    table = bench.drafts(KEY, v1.id)  # no encoder: template drafts
    assert len(table) == 20 and all(r.endswith(f"answer {t}") for r, t in zip(table["rationale"], table["target"]))
    table.loc[0, "rationale"] = "edited. answer " + table.loc[0, "target"]
    v2 = bench.save_drafts(KEY, v1.id, table.astype(str))  # a browser sends strings back
    assert v2.id == f"{folder.name}/v2" and len(bench.drafts(KEY, v2.id)) == 0
    assert "0 without a rationale" in bench.dataset_summary(KEY, v2.id)
    assert "20 without a rationale" in bench.dataset_summary(KEY, v1.id)  # v1 is as it was
    first = json.loads(v2.path.read_text().splitlines()[int(table.loc[0, "row"])])
    assert first["rationale"].startswith("edited.")

    job = bench.launch(KEY, v2.id, "tiny", "rge", 2, 4, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.2, "smoke")
    cfg = job.config()
    assert (cfg.threads, cfg.batch_size, cfg.max_new_tokens, cfg.data) == (1, 4, 8, str(v2.path))
    assert cfg.init == str(tiny_dir) and job.dataset == v2.id
    deadline = time.time() + 600
    while (p := bench.progress(KEY, job.id))["status"] not in ("finished", "failed") and time.time() < deadline:
        time.sleep(0.5)
    assert p["status"] == "finished", p["log_tail"]
    assert p["step"] == p["total_steps"] == 2 and p["metrics"]["loss"].notna().all()
    assert p["log_tail"] and sys.executable not in p["log_tail"]  # the server's paths are shortened to names
    assert bench.jobs_table(KEY)["status"].tolist() == ["finished"]
    assert bench.jobs_table(KEY)["dataset"].tolist() == [v2.id]
    assert "finished" in bench.status_line(p) and len(loss_figure(p["metrics"]).data) >= 2
    # a job's name is the user's text: shown as typed, not read as plotly markup (QA: "<b>x</b>" was bold)
    assert loss_figure(p["metrics"], "job <b>x</b>").layout.title.text == "job &lt;b&gt;x&lt;/b&gt;"
    total = loss_figure(p["metrics"]).data[-1]  # drawn last, dashed: over the part it mostly is (QA: hidden)
    assert total.name == "loss" and total.line.dash == "dash" and total.legendrank == 1
    # a short run's steps are whole-number ticks; an empty plot says so instead of axes below zero (QA)
    assert loss_figure(p["metrics"]).layout.xaxis.dtick == 1
    empty = loss_figure(None)
    assert not empty.data and empty.layout.xaxis.visible is False
    assert [a.text for a in empty.layout.annotations] == ["no steps recorded yet"]
    samples = bench.samples_table(p)
    assert len(samples) == len(p["samples"]) > 0 and samples["rationale"].str.len().gt(0).all()
    blank = {**p, "samples": [{"step": 2, "rationale": ""}], "attempt": 3}  # QA: a blank row; a clock reset
    assert bench.samples_table(blank)["rationale"].tolist() == ["(empty)"]
    assert " s in attempt 3" in bench.status_line(blank) and " in attempt" not in bench.status_line(p)

    results = bench.results(KEY, job.id, max_queries=4)
    assert results["model"].tolist() == ["before", "before", "after", "after"]
    assert results["p@1"].between(0, 1).all() and (job.path / "before_after.csv").is_file()

    name = bench.register_result(KEY, job.id)
    assert name == f"job-{job.id}" and name in bench.base_models(KEY) and name in bench.model_names(KEY)
    assert name not in bench.model_names(OTHER)  # this session's model only
    vec = bench.manager.load(name).encoder.direct([EmbedInput("Represent the given answer.", "two")])
    assert vec.shape[0] == 1 and abs(float((vec ** 2).sum()) - 1) < 1e-4
    with pytest.raises(ValueError, match="nothing to cancel"):
        bench.cancel(KEY, job.id)

    # An app restart: a new manager and workbench on the same folder still list the fine-tuned model.
    restarted = Workbench(None, manager_for(tmp_path, tiny_dir), background=False)
    try:
        assert name in restarted.model_names(KEY) and name not in restarted.model_names(OTHER)
        assert name in {r["name"] for r in restarted.model_catalog(KEY)}
        assert restarted.manager.load(name).encoder.direct([EmbedInput("", "two")]).shape[0] == 1
    finally:
        restarted.close()


def test_bad_uploads_and_bad_launch_fields_give_clear_errors(idle_bench, tmp_path):
    bench = idle_bench
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text('{"query_text": "a cat", "target_text": "cat", "rationale": "furry. answer cat"}\n'
                        '{"query_text": "a dog"}\n'
                        '{"query_text": "a cow", "target_text": "cow", "rationale": "moo. answer cow"}\n')
    folder, report = bench.new_upload(KEY, manifest)
    assert [(p.line, p.field) for p in report.problems] == [(2, "target_text")]
    with pytest.raises(UploadError, match="skip"):
        bench.build(KEY, folder.name, report)
    assert bench.datasets(KEY) == []  # nothing was written
    version = bench.build(KEY, folder.name, None, skip_bad=True)  # the report is made again from the upload
    assert version.n_pairs == 2 and len(version.rows()) == 2
    with pytest.raises(UploadError, match="nothing uploaded"):
        bench.new_upload(KEY)
    with pytest.raises(DatasetError, match="no dataset"):
        bench.drafts(KEY, "../../etc")
    with pytest.raises(DatasetError, match="no version v9"):
        bench.drafts(KEY, f"{folder.name}/v9")

    broken = tmp_path / "broken-model"  # refused at launch, not by the worker
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    good = dict(dataset=version.id, base_model="tiny", stage="rge", steps=2, batch_size=2, lr=1e-3, a_lm=0.1,
                a_con=1.0, temperature=0.03, lora=False, max_new_tokens=8, val_share=0.0, name="")
    for field, value, message in [("steps", 0, "steps must be a whole number"),
                                  ("steps", 2.5, "steps must be a whole number"),
                                  ("batch_size", 1, "batch size"),
                                  ("lr", 0, "learning rate"),
                                  ("temperature", float("nan"), "temperature"),
                                  ("val_share", 0.95, "validation share"),
                                  ("stage", "leakage", "stage must be one of"),
                                  ("base_model", "MCG-NJU/RGE", "hub id"),
                                  ("base_model", "someone/else", "hub id"),
                                  ("base_model", "no-such-model", "not a registered model"),
                                  ("base_model", str(broken), r"config.json.*not valid JSON"),
                                  ("dataset", str(tmp_path / "pairs.jsonl"), "no dataset"),
                                  ("dataset", "", "no dataset")]:
        with pytest.raises((WorkbenchError, DatasetError, ModelError), match=message):
            bench.launch(KEY, **{**good, field: value})
    assert bench.jobs_table(KEY).empty  # nothing was queued
    with pytest.raises(ValueError, match="choose a job"):
        bench.progress(KEY, "")

    # Pairs of one target leave InfoNCE nothing to tell apart: refused at launch, not as a failed job.
    manifest.write_text('{"query_text": "a cat", "target_text": "cat"}\n{"query_text": "a kitten", "target_text": "cat"}\n')
    same, _ = bench.new_upload(KEY, manifest)
    one_target = bench.build(KEY, same.name, None)
    with pytest.raises(WorkbenchError, match=r"its 2 training pair\(s\) share one target; stage 'baseline'"):
        bench.launch(KEY, **{**good, "dataset": one_target.id, "stage": "baseline"})
    assert bench.jobs_table(KEY).empty


def test_rebuild_and_rationale_saves_make_new_versions_that_keep_every_saved_rationale(idle_bench):
    """Defect 1: 20 drafted + 1 edited rationale survive "Build dataset" again; a job's version never changes."""
    bench = idle_bench
    folder, report = bench.sample_upload(KEY)
    v1 = bench.build(KEY, folder.name, report)
    assert v1.n_rationales == 20  # the manifest's own
    table = bench.drafts(KEY, v1.id)
    assert bench.answerless(table) == []  # drafted rationales end in "answer <target>"
    edited = table.copy()
    edited.loc[edited.index[1], "rationale"] = "the object is purple"  # QA: saved without a word
    edited.loc[edited.index[2], "rationale"] = f"Shapes.  ANSWER {edited['target'].iloc[2]}."  # spacing, case aside
    assert bench.answerless(edited) == [int(edited["row"].iloc[1])]
    v2 = bench.save_drafts(KEY, v1.id, table)  # 20 saved
    given = next(r for r in v2.rows() if r["row"] not in set(table["row"]))
    edit = given["row"]
    v3 = bench.save_drafts(KEY, v2.id, pd.DataFrame([{"row": edit, "rationale": "my own. answer x"}]))  # 1 edit
    assert [v.version for v in (v1, v2, v3)] == [1, 2, 3] and v3.n_rationales == 40
    job = bench.launch(KEY, v3.id, "tiny", "rge", 2, 4, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.2, "on v3")
    before = {v.id: digest(v.path) for v in (v1, v2, v3)}

    v4 = bench.build(KEY, folder.name, None)  # "Build dataset" again: from the manifest, plus every saved rationale
    assert v4.version == 4 and v4.n_pairs == 40 and v4.n_rationales == 40
    rows = {r["row"]: r["rationale"] for r in v4.rows()}
    assert rows[edit] == "my own. answer x"
    saved = dict(zip(table["row"], table["rationale"]))
    assert all(rows[i] == text for i, text in saved.items())  # the 20 drafted ones
    changed = sum(a["rationale"] != b.get("rationale") for a, b in zip(v4.rows(), v1.rows()))
    assert changed == 21  # 20 saved + 1 edit, none lost

    assert {v.id: digest(v.path) for v in (v1, v2, v3)} == before  # no version was changed in place
    assert job.config().data == str(v3.path) and bench.queue.job(owner_id(KEY), job.id).dataset == v3.id
    assert bench.jobs_table(KEY)["dataset"].tolist() == [v3.id]
    assert len(load_pairs(job.config().data)) == 40
    assert v3.path.stat().st_mode & 0o222 == 0  # a built version is read-only on disk too
    assert bench.save_drafts(KEY, v4.id, table).id == v4.id  # nothing new: no new version


def test_a_page_reload_and_an_app_restart_bring_the_session_back(tmp_path, tiny_dir):
    """Defect 3 (Train): the tab's load event gives a known key its last upload, dataset versions and jobs."""
    from rge_demo.app.demo import Demo
    from rge_demo.ui import train

    settings = Settings(cache_dir=tmp_path / "cache", model=str(tiny_dir), device="cpu", model_roots=(tmp_path,))
    demo = Demo(settings, galleries_dir=tmp_path)
    try:
        with gr.Blocks():
            on_page_load, inputs, outputs = train.build(demo, gr.State(None))
        assert len(inputs) == 1 and len(outputs) == 10
        first = on_page_load(None, None)  # a new browser: a key is made
        key = first[0]
        assert isinstance(key, str) and len(key) >= 16 and first[1] == ""
        folder, report = demo.workbench.sample_upload(key)
        version = demo.workbench.build(key, folder.name, report)
        demo.workbench.queue.manager.max_running = 0  # keep the job queued: no trainer in this test
        job = demo.workbench.launch(key, version.id, str(tiny_dir), "baseline", 2, 4, 1e-3, 0.1, 1.0, 0.03, False,
                                    8, 0.2, "queued")
    finally:
        demo.workbench.close()

    restarted = Demo(settings, galleries_dir=tmp_path)  # a new app process on the same cache folder
    try:
        restarted.workbench.queue.manager.max_running = 0
        with gr.Blocks():
            on_page_load, _, _ = train.build(restarted, gr.State(None))
        back, upload, summary, problems, counts, datasets, info, jobs, job_pick, base = on_page_load(key, None)
        assert back == key and upload == folder.name and "40 valid" in summary
        assert counts.values.tolist() == [["count", 20], ["ground", 20]] and problems.empty
        assert datasets["choices"] == [(version.label, version.id)] and datasets["value"] == version.id
        assert "40 pair(s)" in info and jobs["id"].tolist() == [job.id] and job_pick["value"] == job.id
        assert tiny_dir.name in base["choices"]
        stranger = on_page_load(None, None)  # another browser sees none of it
        assert stranger[1] == "" and stranger[5]["choices"] == [] and stranger[7].empty
        assert tiny_dir.name not in stranger[9]["choices"]  # the folder this session named is its own
    finally:
        restarted.workbench.close()


def test_the_tab_builds_inside_blocks(tmp_path, tiny_dir):
    from rge_demo.app.demo import Demo
    from rge_demo.ui import train

    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(tiny_dir), device="cpu", model_roots=(tmp_path,)),
                galleries_dir=tmp_path)
    try:
        with gr.Blocks() as blocks:
            train.build(demo, gr.State(None))
        names = {d.get("api_name") for d in blocks.config["dependencies"]}
        assert {"validate_upload", "launch_training", "training_progress", "build_dataset"} <= names
    finally:
        demo.workbench.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_eg_rl_job_runs_in_the_worker_with_its_reward_curve(bench):
    folder, report = bench.sample_upload(KEY)
    version = bench.build(KEY, folder.name, report)  # eg-rl needs no rationale on the pairs
    job = bench.launch(KEY, version.id, "tiny", "eg-rl", 2, 2, 1e-4, 0.1, 1.0, 0.03, False, 4, 0.2, "rl")
    assert job.config().stage == "eg-rl" and job.config().group_size == 4
    deadline = time.time() + 600
    while (p := bench.progress(KEY, job.id))["status"] not in ("finished", "failed") and time.time() < deadline:
        time.sleep(0.5)
    assert p["status"] == "finished", p["log_tail"]
    m = p["metrics"]
    assert m["reward"].between(0, 1.5).all() and (m["kl"] >= 0).all()
    assert {"reward", "retrieval_reward", "kl"} <= {t.name for t in loss_figure(m).data}


# --------------------------------------------------------------- QA: control tokens, double launch, failed validation
BASELINE = dict(base_model="tiny", stage="baseline", steps=5, batch_size=2, lr=1e-3, a_lm=0.1, a_con=1.0,
                temperature=0.03, lora=False, max_new_tokens=8, val_share=0.0)


def test_an_upload_with_a_control_token_lists_the_row_and_builds_without_it(idle_bench, tmp_path):
    bench = idle_bench
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text('{"query_text": "a <emb> b", "target_text": "y"}\n'
                        '{"query_text": "a b", "target_text": "z"}\n')
    folder, report = bench.new_upload(KEY, manifest)
    problems, counts = bench.report_tables(report)
    assert problems.values.tolist() == [[1, "query_text", "query_text contains '<emb>', one of the model's control "
                                         "tokens (it would be read as that token, not as text): remove it"]]
    assert counts.values.tolist() == [["retrieval", 1]] and "1 valid, 1 problem(s)" in report.summary()
    with pytest.raises(UploadError, match=r"skip the rows on line\(s\) \[1\]"):
        bench.build(KEY, folder.name, report)
    version = bench.build(KEY, folder.name, report, skip_bad=True)
    assert "<emb>" not in version.path.read_text() and version.n_pairs == 1


def test_a_rationale_with_a_control_token_is_not_saved_and_an_old_dataset_with_one_is_not_trained(idle_bench):
    bench = idle_bench
    folder, report = bench.sample_upload(KEY)
    v1 = bench.build(KEY, folder.name, report)
    row = next(r["row"] for r in v1.rows() if not r.get("rationale"))
    with pytest.raises(DatasetError, match=rf"rationale for row {row} contains '<emb>', one of the model's control"):
        bench.save_drafts(KEY, v1.id, pd.DataFrame([{"row": row, "rationale": "two. <emb> answer two"}]))
    assert bench.datasets(KEY) == [v1.id]  # nothing was saved

    # A version built before uploads were checked (QA's data/v1.jsonl held "a <emb> b") is refused at launch.
    rows = [{k: v for k, v in r.items() if k != "row"} for r in v1.rows()]
    rows[3]["query_text"] = "a <emb> b"
    data = folder / "data"
    (data / "v2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "v2.json").write_text(json.dumps({**json.loads((data / "v1.json").read_text()), "version": 2}))
    with pytest.raises(WorkbenchError, match=rf"dataset {folder.name}/v2, row 3: field 'query_text' contains '<emb>'"):
        bench.launch(KEY, f"{folder.name}/v2", name="old", **BASELINE)
    assert bench.jobs_table(KEY).empty


def test_a_second_launch_of_a_queued_job_name_is_refused(idle_bench):
    """QA: two quick clicks on Launch made two identical jobs."""
    bench = idle_bench
    folder, report = bench.sample_upload(KEY)
    dataset = bench.build(KEY, folder.name, report).id
    first = bench.launch(KEY, dataset, name="long", **BASELINE)
    assert first.status == "queued"
    with pytest.raises(JobError, match=rf"^job 'long' is already queued \({first.id}\): cancel it or choose another "
                                       "name$"):
        bench.launch(KEY, dataset, name="long", **BASELINE)
    other = bench.launch(KEY, dataset, name="short", **BASELINE)  # another name: fine
    unnamed = bench.launch(KEY, dataset, name="", **BASELINE)  # the default name counts as a name too
    with pytest.raises(JobError, match=f"is already queued \\({unnamed.id}\\)"):
        bench.launch(KEY, dataset, name="", **BASELINE)
    # ... and is named for its settings: another learning rate is another job (QA: it was refused)
    other_lr = bench.launch(KEY, dataset, name="", **{**BASELINE, "lr": BASELINE.get("lr", 1e-4) * 3})
    assert other_lr.name != unnamed.name and f"on {dataset}" in other_lr.name
    bench.cancel(KEY, other_lr.id)
    bench.cancel(KEY, first.id)
    again = bench.launch(KEY, dataset, name="long", **BASELINE)  # the first one is cancelled: fine
    assert len({first.id, other.id, unnamed.id, other_lr.id, again.id}) == 5
    # newest first: the waiting jobs are the rows in view (QA: below the table's fold); a reload shows the newest
    assert bench.jobs_table(KEY)["name"].tolist() == ["long", other_lr.name, unnamed.name, "short", "long"]
    assert bench.job_ids(KEY)[0] == again.id and bench.restore(KEY)["job"] == again.id
    # resuming the cancelled one while its namesake waits would make two again (QA)
    with pytest.raises(JobError, match=rf"^job 'long' is already queued \({again.id}\): wait for it to end or "
                                       "cancel it$"):
        bench.resume(KEY, first.id)
    assert bench.jobs_table(KEY).set_index("id")["status"][first.id] == "cancelled"
    bench.cancel(KEY, again.id)
    assert bench.resume(KEY, first.id).status == "queued"  # its namesake is cancelled now: fine
    with pytest.raises(JobError, match=rf"^job 'long' is already queued \({first.id}\)"):
        bench.resume(KEY, again.id)


def test_two_launches_arriving_together_make_one_job(idle_bench):
    bench = idle_bench
    folder, report = bench.sample_upload(KEY)
    dataset = bench.build(KEY, folder.name, report).id
    start = threading.Barrier(4)
    outcomes: list = []

    def click():
        start.wait()
        try:
            outcomes.append(bench.launch(KEY, dataset, name="long", **BASELINE))
        except JobError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=click) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    jobs = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(outcomes) == 4 and len(jobs) == 1, outcomes
    assert all("is already queued" in str(o) for o in outcomes if o not in jobs)
    assert bench.jobs_table(KEY)["id"].tolist() == [jobs[0].id]


def run_click(blocks: gr.Blocks, api_name: str, page: dict, *args):
    """What the browser does on the click that ends in ``api_name`` (called with ``args``): every step
    of its chain in order (``.then`` steps run after the previous one, failed or not), each writing its
    outputs to ``page`` (component id -> value) unless it raised. Returns the error raised, if any."""
    fns = blocks.fns.values()
    last = next(f for f in fns if f.api_name == api_name)
    chain = [last]
    while chain[0].trigger_after is not None:
        chain.insert(0, blocks.fns[chain[0].trigger_after])
    error = None
    for f in chain:
        values = [page.get(c._id) for c in f.inputs] if f is not last else list(args)
        if "request" in inspect.signature(f.fn).parameters:
            values.append(None)
        try:
            out = f.fn(*values)
        except gr.Error as e:
            error = e
            continue
        out = out if isinstance(out, tuple) else (out,)
        page.update({c._id: v for c, v in zip(f.outputs, out)})
    return error


def test_build_after_a_failed_validation_does_not_build_the_previous_upload(tmp_path, tiny_dir):
    """QA: sample upload built, then a corrupt zip failed validation, and Build made a new version of
    the sample upload without a word. The failed validation now leaves no upload for Build."""
    from rge_demo.app.demo import Demo
    from rge_demo.ui import train

    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(tiny_dir), device="cpu", model_roots=(tmp_path,)),
                galleries_dir=tmp_path)
    try:
        with gr.Blocks() as blocks:
            _, _, outputs = train.build(demo, gr.State(None))
        upload_box = outputs[1]
        page: dict = {}
        assert run_click(blocks, "sample_upload", page, KEY) is None
        sample = page[upload_box._id]
        assert sample and "40 valid" in demo.workbench.restore(KEY)["summary"]
        build = next(f.fn for f in blocks.fns.values() if f.api_name == "build_dataset")
        build(KEY, sample, None, False, None)  # v1

        corrupt = tmp_path / "corrupt.zip"
        corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
        error = run_click(blocks, "validate_upload", page, KEY, None, str(corrupt))
        assert error is not None and "corrupt.zip" in str(error) and "internal error" not in str(error)
        assert page[upload_box._id] == ""  # the page no longer holds the sample upload
        with pytest.raises(gr.Error, match="no upload yet"):
            build(KEY, page[upload_box._id], None, False, None)
        assert demo.workbench.datasets(KEY) == [f"{sample}/v1"]  # no silent v2
    finally:
        demo.workbench.close()
