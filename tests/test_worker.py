"""Train tab backend end to end: sample upload -> dataset -> drafts -> background jobs on the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rge_demo.data.upload import build_dataset, unpack_upload, validate
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.models.loading import load_checkpoint
from rge_demo.training import drafting
from rge_demo.training.config import TrainConfig
from rge_demo.training.data import load_pairs
from rge_demo.training.worker import Job, JobError, JobManager, before_after

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample_upload" / "sample_upload.zip"
LONG = 100_000  # steps of a job that is stopped from outside


@pytest.fixture(scope="module")
def dataset(tiny, tmp_path_factory):
    """The sample upload as a trainer pairs file, its missing rationales drafted (model and template)."""
    job = tmp_path_factory.mktemp("dataset")
    manifest, root = unpack_upload(job, archive=SAMPLE)
    report = validate(manifest, root)
    assert report.ok, report.summary()
    pairs = build_dataset(report, job)

    rows = drafting.load_rows(job)
    assert len(rows) == 20 and not any(r.get("rationale") for r in rows)
    by_model = drafting.draft_rationales(Encoder(*tiny), rows[:2], max_new_tokens=8, root=pairs.parent)
    by_template = [drafting.template_rationale(r) for r in rows[2:]]
    for row, draft in zip(rows, by_model + by_template):
        assert draft.endswith(f"answer {drafting.target_label(row)}"), draft
    assert "answer" in drafting.draft_prompt("vqa", "How many?", "two")
    table = drafting.drafts_table(rows, by_model + by_template)
    table.loc[0, "rationale"] = "edited by hand. answer " + drafting.target_label(rows[0])
    drafting.save_drafts(job, table)
    loaded = load_pairs(pairs)
    assert all(p.rationale for p in loaded) and loaded[rows[0]["row"]].rationale.startswith("edited by hand")
    return pairs


def config(tiny_dir, pairs, steps) -> TrainConfig:
    return TrainConfig(stage="rge", init=str(tiny_dir), data=str(pairs), steps=steps, cold_start_steps=1,
                       batch_size=4, max_new_tokens=8, probe_every=0, save_every=0, warmup_steps=0,
                       val_share=0.2, threads=1)


def wait(manager: JobManager, job_id: str, until, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        manager.poll()
        progress = manager.progress(job_id)
        if until(progress):
            return progress
        time.sleep(0.2)
    raise AssertionError(f"timed out; last progress: {progress['status']} step {progress['step']}\n{progress['log_tail']}")


def test_queue_kill_finish_and_recover(tmp_path, tiny_dir, dataset):
    manager = JobManager(tmp_path / "jobs", background=False)
    doomed = manager.submit(config(tiny_dir, dataset, LONG), name="to be killed")
    good = manager.submit(config(tiny_dir, dataset, 2), name="Good run!")
    assert [j.status for j in manager.jobs()] == ["running", "queued"]  # one job per device
    assert good.id.split("-")[2:4] == ["good", "run"]

    wait(manager, doomed.id, lambda p: p["step"] >= 1)
    os.kill(manager.job(doomed.id).pid, signal.SIGKILL)
    p = wait(manager, doomed.id, lambda p: p["status"] == "failed")
    assert "signal 9" in p["error"] and manager.job(doomed.id).returncode == -9
    assert manager.job(good.id).status == "running"  # the queue moved on

    p = wait(manager, good.id, lambda p: p["status"] == "finished", timeout=90)
    assert p["step"] == p["total_steps"] == 3 and list(p["metrics"]["step"]) == [1, 2, 3]
    assert p["metrics"]["loss"].notna().all() and p["samples"] and p["eta_seconds"] is None
    job = manager.job(good.id)
    assert (job.path / "metrics.jsonl").exists() and json.loads((job.path / "status.json").read_text())["status"] == "finished"
    model, processor = load_checkpoint(job.model_dir, device="cpu", dtype="float32")
    vec = Encoder(model, processor).direct([EmbedInput("Represent the given answer.", "two")])
    assert vec.shape[0] == 1 and abs(float((vec ** 2).sum()) - 1) < 1e-4

    table = before_after(job, max_queries=4)
    assert list(table["model"]) == ["before", "before", "after", "after"] and table["p@1"].between(0, 1).all()

    recovered = JobManager(tmp_path / "jobs", background=False)
    assert [(j.id, j.status) for j in recovered.jobs()] == [(doomed.id, "failed"), (good.id, "finished")]
    assert recovered.progress(good.id)["step"] == 3
    with pytest.raises(JobError, match="nothing to cancel"):
        recovered.cancel(good.id)


def test_cancel_then_resume_continues_the_step_count(tmp_path, tiny_dir, dataset):
    manager = JobManager(tmp_path / "jobs", background=False)
    job = manager.submit(config(tiny_dir, dataset, LONG), name="cancel me")
    wait(manager, job.id, lambda p: p["step"] >= 2)
    assert manager.cancel(job.id).status == "cancelling"
    p = wait(manager, job.id, lambda p: p["status"] == "cancelled")
    stopped = p["step"]
    checkpoints = sorted((job.path / "checkpoints").glob("step-*"))
    assert checkpoints and checkpoints[-1].name == f"step-{stopped:06d}"

    manager.resume(job.id, steps=stopped)  # total = cold start (1) + steps: one more step
    p = wait(manager, job.id, lambda p: p["status"] == "finished", timeout=90)
    steps = list(p["metrics"]["step"])
    assert steps == list(range(1, stopped + 2)) and manager.job(job.id).attempts == 2
    assert "resuming from" in (job.path / "log.txt").read_text()


def test_a_running_job_whose_process_vanished_becomes_failed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = tmp_path / "jobs" / "old-job"
    folder.mkdir(parents=True)
    (folder / "log.txt").write_text("Traceback: out of memory\n")
    Job("old-job", "old", str(folder), status="running", created=1.0, pid=dead.pid).save()
    queued = Job("queued-job", "q", str(tmp_path / "jobs" / "queued-job"), created=2.0)
    Path(queued.dir).mkdir()
    queued.save()
    manager = JobManager(tmp_path / "jobs", background=False, max_running=0)
    old = manager.job("old-job")
    assert old.status == "failed" and "vanished" in old.error and "out of memory" in old.error
    assert manager.cancel("queued-job").status == "cancelled"
    with pytest.raises(JobError, match="no job"):
        manager.job("../etc")


def test_background_thread_reaps_a_failing_job(tmp_path, tiny_dir):
    """No manual poll: the daemon thread starts the job and records the trainer's data error."""
    manager = JobManager(tmp_path / "jobs", poll_interval=0.2)
    try:
        cfg = TrainConfig(stage="baseline", init=str(tiny_dir), data=str(tmp_path / "missing.jsonl"), steps=1,
                          batch_size=2, threads=1)
        job = manager.submit(cfg, name="bad data")
        deadline = time.time() + 60
        while manager.job(job.id).status not in ("failed", "finished") and time.time() < deadline:
            time.sleep(0.2)
        job = manager.job(job.id)
        assert job.status == "failed" and job.returncode == 2 and "no such pairs file" in job.error
        assert len(manager.jobs_table()) == 1
    finally:
        manager.close()
