"""Background jobs on the tiny model: the worker process side (rge_demo.training.worker) and the queue's
app side (rge_demo.app.jobs): queue, kill, finish, cancel, resume, an app restart, damaged metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rge_demo.app.jobs import JobQueue, before_after, read_metrics
from rge_demo.data.upload import build_dataset, unpack_upload, validate
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.models.loading import load_checkpoint
from rge_demo.training import drafting
from rge_demo.training.config import TrainConfig
from rge_demo.training.data import load_pairs
from rge_demo.training.worker import EXIT_FILE, Job, JobError, JobManager

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample_upload" / "sample_upload.zip"
LONG = 100_000  # steps of a job that is stopped from outside
OWNER = "0" * 32  # an owner id (rge_demo.app.sessions.owner_id of some key)
SLOW = 600  # seconds a trainer may take to start and step on a loaded 2-core machine


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


def wait(queue: JobQueue, job_id: str, until, timeout: float = SLOW) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        queue.poll()
        progress = queue.progress(OWNER, job_id)
        if until(progress):
            return progress
        time.sleep(0.2)
    raise AssertionError(f"timed out; last progress: {progress['status']} step {progress['step']}\n{progress['log_tail']}")


@pytest.mark.slow
@pytest.mark.timeout(3 * SLOW)
def test_queue_kill_finish_and_recover(tmp_path, tiny_dir, dataset):
    queue = JobQueue(tmp_path / "jobs", background=False)
    manager = queue.manager
    doomed = queue.submit(OWNER, config(tiny_dir, dataset, LONG), name="to be killed")
    good = queue.submit(OWNER, config(tiny_dir, dataset, 2), name="Good run!")
    assert [j.status for j in manager.jobs()] == ["running", "queued"]  # one job per device
    assert good.id.split("-")[2:4] == ["good", "run"]

    wait(queue, doomed.id, lambda p: p["step"] >= 1)
    os.kill(manager.job(doomed.id).pid, signal.SIGKILL)
    p = wait(queue, doomed.id, lambda p: p["status"] == "failed")
    assert "signal 9" in p["error"] and manager.job(doomed.id).returncode == -9
    assert not (doomed.path / EXIT_FILE).exists()  # a killed worker leaves no exit record
    assert manager.job(good.id).status == "running"  # the queue moved on

    p = wait(queue, good.id, lambda p: p["status"] == "finished")
    assert p["step"] == p["total_steps"] == 3 and list(p["metrics"]["step"]) == [1, 2, 3]
    assert p["metrics"]["loss"].notna().all() and p["samples"] and p["eta_seconds"] is None
    job = manager.job(good.id)
    assert (job.path / "metrics.jsonl").exists() and json.loads((job.path / "status.json").read_text())["status"] == "finished"
    model, processor = load_checkpoint(job.model_dir, device="cpu", dtype="float32")
    vec = Encoder(model, processor).direct([EmbedInput("Represent the given answer.", "two")])
    assert vec.shape[0] == 1 and abs(float((vec ** 2).sum()) - 1) < 1e-4

    table = before_after(job, max_queries=4)
    assert list(table["model"]) == ["before", "before", "after", "after"] and table["p@1"].between(0, 1).all()

    assert json.loads((job.path / EXIT_FILE).read_text())["code"] == 0

    recovered = JobQueue(tmp_path / "jobs", background=False)
    assert [(j.id, j.status) for j in recovered.jobs(OWNER)] == [(doomed.id, "failed"), (good.id, "finished")]
    assert recovered.progress(OWNER, good.id)["step"] == 3
    with pytest.raises(JobError, match="nothing to cancel"):
        recovered.cancel(OWNER, good.id)


@pytest.mark.slow
@pytest.mark.timeout(3 * SLOW)
def test_cancel_then_resume_past_a_half_written_metrics_line(tmp_path, tiny_dir, dataset):
    """Defect 5: a metrics.jsonl whose last line was cut short (a crash mid-write) still resumes."""
    queue = JobQueue(tmp_path / "jobs", background=False)
    job = queue.submit(OWNER, config(tiny_dir, dataset, LONG), name="cancel me")
    wait(queue, job.id, lambda p: p["step"] >= 2)
    assert queue.cancel(OWNER, job.id).status == "cancelling"
    p = wait(queue, job.id, lambda p: p["status"] == "cancelled")
    stopped = p["step"]
    assert queue.manager.job(job.id).checkpoint.name == f"step-{stopped:06d}"

    with open(job.path / "metrics.jsonl", "a") as f:
        f.write('{"step": %d, "total_steps": 9, "phase": "rge", "lo' % (stopped + 1))  # no newline: cut short
    assert queue.progress(OWNER, job.id)["step"] == stopped  # the app's reader skips it

    with pytest.raises(JobError, match="a resume continues the same run; lora, stage cannot change"):
        queue.resume(OWNER, job.id, stage="leakage", lora=True, data=job.config().data)  # data as it was: fine
    assert queue.manager.job(job.id).status == "cancelled" and job.config().stage == "rge"
    queue.resume(OWNER, job.id, steps=stopped)  # total = cold start (1) + steps: one more step
    p = wait(queue, job.id, lambda p: p["status"] in ("finished", "failed"))
    assert p["status"] == "finished", p["log_tail"]
    steps = list(p["metrics"]["step"])
    assert steps == list(range(1, stopped + 2)) and queue.manager.job(job.id).attempts == 2
    assert "resuming from" in (job.path / "log.txt").read_text()


@pytest.mark.slow
@pytest.mark.timeout(3 * SLOW)
def test_cancel_after_an_app_restart_records_cancelled_with_its_checkpoint(tmp_path, tiny_dir, dataset):
    """Defect 6: the app that started the worker is gone; the restarted app cancels it; the worker saves a
    checkpoint and exits cleanly: "cancelled", not "the worker process vanished"."""
    root, cfg_file = tmp_path / "jobs", tmp_path / "long.json"
    cfg_file.write_text(json.dumps(config(tiny_dir, dataset, LONG).to_dict()))
    first_app = ("import sys\nfrom rge_demo.training.config import TrainConfig\n"
                 "from rge_demo.training.worker import JobManager\n"
                 "job = JobManager(sys.argv[1], background=False).submit(TrainConfig.from_file(sys.argv[2]), name='x',\n"
                 "                                                  owner=sys.argv[3])\n"
                 "print(job.id, job.pid)\n")
    out = subprocess.run([sys.executable, "-c", first_app, str(root), str(cfg_file), OWNER], capture_output=True,
                         text=True, timeout=SLOW, check=True).stdout.split()
    job_id, pid = out[-2], int(out[-1])
    try:
        queue = JobQueue(root, background=False)  # the restarted app: the worker is not its child
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        wait(queue, job_id, lambda p: p["step"] >= 1)
        assert queue.cancel(OWNER, job_id).status == "cancelling"
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    p = wait(queue, job_id, lambda p: p["status"] not in ("running", "cancelling"))
    job = queue.manager.job(job_id)
    assert (p["status"], p["error"]) == ("cancelled", ""), p["error"]
    assert job.checkpoint is not None and job.checkpoint.name == f"step-{p['step']:06d}"
    assert json.loads((job.path / EXIT_FILE).read_text())["code"] == 3
    assert queue.jobs_table(OWNER)["checkpoint"].tolist() == [job.checkpoint.name]


def test_the_metrics_reader_skips_damaged_lines(tmp_path):
    """Defect 5 (app side): half-written, binary or foreign lines never hide the curve or break a poll."""
    path = tmp_path / "metrics.jsonl"
    good = [{"step": 1, "loss": 2.0, "seconds": 0.5}, {"step": 2, "loss": 1.5, "seconds": 0.5}]
    path.write_bytes(b"".join([json.dumps(good[0]).encode() + b"\n", b"\xff\xfe\x00garbage\n", b"[1, 2]\n",
                               b'{"loss": 3}\n', b'{"step": "3"}\n', json.dumps(good[1]).encode() + b"\n",
                               b'{"step": 3, "loss": 1.']))
    assert read_metrics(path) == good
    assert read_metrics(tmp_path / "missing.jsonl") == []

    folder = tmp_path / "jobs" / "damaged"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_bytes(path.read_bytes())
    Job("damaged", "d", str(folder), status="cancelled", created=1.0, owner=OWNER).save()
    p = JobQueue(tmp_path / "jobs", background=False, max_running=0).progress(OWNER, "damaged")
    assert p["step"] == 2 and list(p["metrics"]["step"]) == [1, 2]


def test_a_trainer_that_ignores_its_cancel_is_killed_after_the_grace(tmp_path):
    """A cancelled trainer stuck before its SIGTERM handler (e.g. loading a model) must not stay
    "cancelling" for ever, holding the queue's only slot: past the grace, SIGKILL, then "cancelled"."""
    import subprocess
    import sys

    manager = JobManager(tmp_path / "jobs", background=False, cancel_grace_s=0.3)
    stuck = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              "print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert stuck.stdout.readline().strip() == "ready"
        Job("stuck", "s", str(tmp_path / "jobs" / "stuck"), status="running", created=1.0, started=time.time(),
            pid=stuck.pid, owner=OWNER).save()
        manager._procs["stuck"] = stuck  # as _start leaves it
        assert manager.cancel("stuck").status == "cancelling"
        manager.poll()
        assert manager.job("stuck").status == "cancelling" and stuck.poll() is None  # SIGTERM ignored, in its grace
        time.sleep(0.5)
        manager.poll()  # past the grace: SIGKILL
        assert stuck.wait(10) == -9
        manager.poll()
        job = manager.job("stuck")
        assert job.status == "cancelled" and job.returncode == -9
    finally:
        stuck.kill()
        stuck.wait()


def test_a_damaged_status_file_skips_that_job_and_names_it(tmp_path):
    """One job's status.json that is not UTF-8 JSON of an object: the queue still starts and lists the
    others; asking for that job says it is damaged."""
    root = tmp_path / "jobs"
    Job("good", "g", str(root / "good"), status="cancelled", created=1.0, owner=OWNER).save()
    for name, content in (("list", b"[]\n"), ("bytes", b"\xff\xfe garbage"), ("text", b"{half")):
        (root / name).mkdir(parents=True)
        (root / name / "status.json").write_bytes(content)
    manager = JobManager(root, background=False)
    assert [j.id for j in manager.jobs()] == ["good"]
    for name, what in (("list", "holds a list, not a job"), ("bytes", "is damaged"), ("text", "is damaged")):
        with pytest.raises(JobError, match=f"job {name}: its status.json {what}"):
            manager.job(name)


def test_a_running_job_whose_process_vanished_becomes_failed(tmp_path):
    """No exit record, no cancel asked: the worker died (e.g. out of memory) while no manager watched."""
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


@pytest.mark.slow
@pytest.mark.timeout(2 * SLOW)
def test_background_thread_reaps_a_failing_job(tmp_path, tiny_dir):
    """No manual poll: the daemon thread starts the job and records the trainer's data error."""
    manager = JobManager(tmp_path / "jobs", poll_interval=0.2)
    try:
        cfg = TrainConfig(stage="baseline", init=str(tiny_dir), data=str(tmp_path / "missing.jsonl"), steps=1,
                          batch_size=2, threads=1)
        job = manager.submit(cfg, name="bad data")
        deadline = time.time() + SLOW
        while manager.job(job.id).status not in ("failed", "finished") and time.time() < deadline:
            time.sleep(0.2)
        job = manager.job(job.id)
        assert job.status == "failed" and job.returncode == 2
        first = job.error.splitlines()[0]  # what the jobs table and status line show: the trainer's own sentence
        assert first.startswith("worker exited with code 2: ") and "no such pairs file" in first
        assert len(manager.jobs()) == 1 and json.loads((job.path / EXIT_FILE).read_text())["code"] == 2
    finally:
        manager.close()
