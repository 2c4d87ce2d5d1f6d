"""Train tab orchestration (rge_demo.training.workbench) end to end on the tiny model, and the tab's wiring."""

from __future__ import annotations

import json
import time

import gradio as gr
import pytest

from rge_demo.config import Settings
from rge_demo.data.upload import UploadError
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.models.manager import ModelManager, default_specs
from rge_demo.training import drafting
from rge_demo.training.workbench import Workbench, WorkbenchError, loss_figure


@pytest.fixture()
def bench(tmp_path, tiny_dir):
    manager = ModelManager(Settings(cache_dir=tmp_path / "cache", model=str(tiny_dir), device="cpu"),
                           specs=default_specs())
    manager.register(tiny_dir, name="tiny")
    wb = Workbench(None, manager, background=False)
    yield wb
    wb.close()


def test_sample_upload_to_trained_model_in_the_registry(bench, tmp_path):
    folder, report = bench.sample_upload()
    assert report.ok and report.task_counts == {"count": 20, "ground": 20}
    assert folder.parent == tmp_path / "cache" / "jobs" / "uploads"
    again, _ = bench.sample_upload()
    assert again != folder  # every upload gets its own folder

    pairs = bench.build(folder.name, report)
    assert pairs == folder / "data" / "pairs.jsonl" and bench.datasets() == [folder.name]
    assert "20 without a rationale" in bench.dataset_summary(folder.name)
    with pytest.raises(WorkbenchError, match="20 of 40 pairs have no rationale"):
        bench.launch(pairs, "tiny", "rge", 2, 4, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.2, "too early")

    table = bench.drafts(folder.name)  # no encoder: template drafts
    assert len(table) == 20 and all(r.endswith(f"answer {t}") for r, t in zip(table["rationale"], table["target"]))
    table.loc[0, "rationale"] = "edited. answer " + table.loc[0, "target"]
    bench.save_drafts(folder.name, table.astype(str))  # a browser sends strings back
    assert len(bench.drafts(folder.name)) == 0 and "0 without a rationale" in bench.dataset_summary(folder.name)
    first = json.loads(pairs.read_text().splitlines()[int(table.loc[0, "row"])])
    assert first["rationale"].startswith("edited.")

    job = bench.launch(pairs, "tiny", "rge", 2, 4, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.2, "smoke")
    cfg = job.config()
    assert (cfg.threads, cfg.batch_size, cfg.max_new_tokens, cfg.data) == (1, 4, 8, str(pairs))
    assert cfg.init == str(tiny_dir_of(bench))
    deadline = time.time() + 60
    while (p := bench.progress(job.id))["status"] not in ("finished", "failed") and time.time() < deadline:
        time.sleep(0.2)
    assert p["status"] == "finished", p["log_tail"]
    assert p["step"] == p["total_steps"] == 2 and p["metrics"]["loss"].notna().all()
    assert bench.jobs_table()["status"].tolist() == ["finished"]
    assert "finished" in bench.status_line(p) and len(loss_figure(p["metrics"]).data) >= 2

    results = bench.results(job.id, max_queries=4)
    assert results["model"].tolist() == ["before", "before", "after", "after"]
    assert results["p@1"].between(0, 1).all() and (job.path / "before_after.csv").is_file()

    name = bench.register_result(job.id)
    assert name == f"job-{job.id}" and name in bench.base_models()
    vec = bench.manager.load(name).encoder.direct([EmbedInput("Represent the given answer.", "two")])
    assert vec.shape[0] == 1 and abs(float((vec ** 2).sum()) - 1) < 1e-4
    with pytest.raises(ValueError, match="nothing to cancel"):
        bench.cancel(job.id)


def tiny_dir_of(bench):
    return next(s.source for s in bench.manager.specs() if s.name == "tiny")


def test_bad_uploads_and_bad_launch_fields_give_clear_errors(bench, tmp_path):
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text('{"query_text": "a cat", "target_text": "cat", "rationale": "furry. answer cat"}\n'
                        '{"query_text": "a dog"}\n'
                        '{"query_text": "a cow", "target_text": "cow", "rationale": "moo. answer cow"}\n')
    folder, report = bench.new_upload(manifest)
    assert [(p.line, p.field) for p in report.problems] == [(2, "target_text")]
    with pytest.raises(UploadError, match="skip"):
        bench.build(folder.name, report)
    pairs = bench.build(folder.name, None, skip_bad=True)  # the report is made again from the upload
    assert len(drafting.load_rows(folder, missing_only=False)) == 2
    with pytest.raises(UploadError, match="nothing uploaded"):
        bench.new_upload()
    with pytest.raises(WorkbenchError, match="no upload"):
        bench.drafts("../../etc")

    good = dict(pairs_path=pairs, base_model="tiny", stage="rge", steps=2, batch_size=2, lr=1e-3, a_lm=0.1,
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
                                  ("pairs_path", tmp_path / "pairs.jsonl", "no dataset")]:
        with pytest.raises(WorkbenchError, match=message):
            bench.launch(**{**good, field: value})
    assert bench.jobs_table().empty  # nothing was queued
    with pytest.raises(WorkbenchError, match="choose a job"):
        bench.progress("")


def test_the_tab_builds_inside_blocks(tmp_path, tiny_dir):
    from rge_demo.service import Demo
    from rge_demo.ui import train

    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(tiny_dir), device="cpu"), galleries_dir=tmp_path)
    try:
        with gr.Blocks() as blocks:
            train.build(demo, gr.State(None))
        names = {d.get("api_name") for d in blocks.config["dependencies"]}
        assert {"validate_upload", "launch_training", "training_progress"} <= names
    finally:
        demo.workbench.close()
