"""Defect 4 (issue 10): a refused upload leaves nothing behind, and the app's own files expire after
RGE_RETENTION_HOURS, except what a user may still load and the datasets jobs train on.

Everything goes through the real Workbench (its DatasetStore and JobQueue) on a folder of its own."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from rge_demo.app.datasets import DatasetError
from rge_demo.app.sessions import new_key, owner_id
from rge_demo.app.workbench import Workbench
from rge_demo.config import Settings
from rge_demo.data.upload import UploadError, UploadLimits
from rge_demo.models.manager import ModelManager, default_specs
from rge_demo.training.data import load_pairs
from rge_demo.training.worker import Job
from test_upload import make_zip, png

KEY = new_key()
HOURS = 24.0
OLD = (HOURS + 1) * 3600  # seconds: past the retention time


def manager_for(tmp_path, tiny_dir, **settings) -> ModelManager:
    manager = ModelManager(Settings(cache_dir=tmp_path / "cache", model=str(tiny_dir), device="cpu", **settings),
                           specs=default_specs())
    manager.register(tiny_dir, name="tiny")
    return manager


@pytest.fixture()
def bench(tmp_path, tiny_dir):
    """No job ever starts (max_running 0) and no polling thread: the test polls."""
    wb = Workbench(tmp_path / "jobs", manager_for(tmp_path, tiny_dir, retention_hours=HOURS),
                   background=False, max_running=0)
    yield wb
    wb.close()


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root``, relative (the lock files the app keeps there included)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def age(path: Path, seconds: float) -> None:
    """Make ``path`` and everything under it ``seconds`` old (mtime), as if nothing touched it since."""
    when = time.time() - seconds
    for p in [*path.rglob("*"), path]:
        os.utime(p, (when, when), follow_symlinks=False)


def text_manifest(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"query_text": f"a thing {i}", "target_text": f"thing {i}"}) + "\n"
                            for i in range(n)))
    return path


# ---------------------------------------------------------------------------------- refused uploads
def bomb(path: Path) -> Path:
    return make_zip(path, [("images/bomb.png", b"\0" * (4 << 20))])


def liar(path: Path) -> Path:
    """Good entries, then one whose header says 10 bytes while it holds 200 kB: refused midway,
    after the first files were already written."""
    make_zip(path, [("manifest.jsonl", b'{"query_text": "q", "target_image": "images/a.png"}\n'),
                    ("images/a.png", png()), ("images/x.png", os.urandom(200_000))])
    raw = bytearray(path.read_bytes())
    at = raw.rindex(b"PK\x01\x02")
    raw[at + 24:at + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    return path


def oversize_manifest(path: Path) -> Path:
    with open(path.with_suffix(".jsonl"), "wb") as f:  # sparse: 65 MB that cost no disk
        f.truncate(UploadLimits().max_file_bytes + (1 << 20))
    return path.with_suffix(".jsonl")


@pytest.mark.parametrize("make, kind, message", [
    (bomb, "archive", "zip bomb"),
    (liar, "archive", "zip entry .images/x.png."),
    (lambda p: make_zip(p, [("images/ok.png", png()), ("../evil.png", b"x")]), "archive", "'..'"),
    (lambda p: make_zip(p, [(f"images/{i}.png", png()) for i in range(3)] + [("run.sh", b"x")]), "archive",
     "not accepted"),
    (oversize_manifest, "manifest", r"manifest over 67,108,864 bytes"),
])
def test_a_refused_upload_leaves_nothing_behind(bench, tmp_path, make, kind, message):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    source = make(inputs / "up.zip")
    before = tree(bench.root)
    with pytest.raises(UploadError, match=message) as e:
        bench.new_upload(KEY, **{f"{kind}_file": source})
    assert "\n" not in str(e.value)  # one sentence, as the page shows it
    assert tree(bench.root) == before  # no folder, no copied file, no partial extraction
    assert bench.store.uploads(owner_id(KEY)) == []
    assert source.exists()  # the caller's file is the caller's


def test_a_file_over_the_upload_limit_is_refused_before_it_is_copied(tmp_path, tiny_dir):
    wb = Workbench(tmp_path / "jobs", manager_for(tmp_path, tiny_dir, max_upload_mb=1.0), background=False,
                   max_running=0)
    try:
        big = text_manifest(tmp_path / "big.jsonl", n=1)
        with open(big, "ab") as f:
            f.write(b"\n" * (2 << 20))
        before = tree(wb.root)
        with pytest.raises(UploadError, match=r"big.jsonl: 2.0 MB, over the upload limit of 1 MB \(RGE_MAX_UPLOAD_MB\)"):
            wb.new_upload(KEY, big)
        assert tree(wb.root) == before
    finally:
        wb.close()


def test_an_upload_with_no_valid_row_keeps_its_report_but_not_its_files(bench, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query_text": "only a query"}\n{"nonsense": 1}\n')
    folder, report = bench.new_upload(KEY, bad)
    assert not report.ok_rows and len(report.problems) == 2
    assert not (folder / "upload").exists()  # nothing can be built from it: its files are gone at once
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "upload.json"]
    assert bench.restore(KEY)["summary"] == report.summary()  # a reload still shows why
    with pytest.raises(DatasetError, match="no valid row to build from"):
        bench.build(KEY, folder.name, report, skip_bad=True)


def test_a_report_names_the_uploaded_file_and_counts_its_rows(bench, tmp_path):
    """QA: a CSV without the pair columns read "manifest.csv: 0 row(s), 0 valid" (the stored copy's name,
    and no row counted); a zip's manifest is named inside its zip."""
    missing = tmp_path / "missing.csv"
    missing.write_text("query_text,foo\nhello,bar\nworld,baz\n")
    folder, report = bench.new_upload(KEY, missing)
    assert report.summary().startswith("missing.csv: 2 row(s), 0 valid, 2 problem(s)")
    assert bench.restore(KEY)["summary"] == report.summary()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query_text": "a", "target_image": "x.png"}) + "\n")
    zipped = make_zip(tmp_path / "mine.zip", [("pairs.jsonl", pairs.read_bytes()), ("x.png", png())])
    folder, report = bench.new_upload(KEY, archive_file=zipped)
    assert report.summary().startswith("mine.zip: pairs.jsonl: 1 row(s), 1 valid")
    assert bench.report(KEY, folder.name).summary() == report.summary()  # validated again by id: the same name


# -------------------------------------------------------------------------------------- retention
def test_an_old_unbuilt_upload_is_swept_and_a_fresh_one_kept(bench, tmp_path):
    old, _ = bench.new_upload(KEY, text_manifest(tmp_path / "old.jsonl"))
    fresh, _ = bench.new_upload(KEY, text_manifest(tmp_path / "fresh.jsonl"))
    crashed = bench.store.root / "20200101-000000-abcdef"  # an upload a crash left half made
    (crashed / "upload" / "files").mkdir(parents=True)
    stranger = bench.store.root / "notes"  # not an upload: not the app's to delete
    stranger.mkdir()
    age(old, OLD)
    age(crashed, OLD)
    age(stranger, OLD)

    assert bench.sweep() == {"uploads": [crashed.name, old.name], "jobs": []}
    assert not old.exists() and not crashed.exists() and fresh.is_dir() and stranger.is_dir()
    assert bench.store.uploads(owner_id(KEY)) == [fresh.name]
    assert not [p for p in bench.store.root.iterdir() if p.name.startswith(".deleting")]
    with pytest.raises(DatasetError, match="validate an upload first"):
        bench.build(KEY, old.name)
    assert bench.build(KEY, fresh.name).n_pairs == 3  # the fresh one works as before


def test_the_sweep_runs_at_start_and_from_the_job_polls(bench, tmp_path, tiny_dir):
    first, _ = bench.new_upload(KEY, text_manifest(tmp_path / "a.jsonl"))
    age(first, OLD)
    bench.queue.housekeeping(bench.sweep, 0)  # every poll (the polling thread's, a request's) may sweep
    bench.jobs_table(KEY)  # a request that polls the queue
    assert not first.exists()

    second, _ = bench.new_upload(KEY, text_manifest(tmp_path / "b.jsonl"))
    age(second, OLD)
    bench.close()
    restarted = Workbench(bench.root, bench.manager, max_running=0)  # with its polling thread, as the app runs
    try:
        assert not second.exists()  # swept as the app started
        third, _ = restarted.new_upload(KEY, text_manifest(tmp_path / "c.jsonl"))
        age(third, OLD)
        restarted.queue.housekeeping(restarted.sweep, 0)
        restarted.jobs_table(KEY)  # with a polling thread a request does not sweep: the thread does
        deadline = time.monotonic() + 30
        while third.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not third.exists()
    finally:
        restarted.close()


def test_a_dataset_a_job_trains_on_is_kept(bench, tmp_path):
    folder, report = bench.new_upload(KEY, text_manifest(tmp_path / "pairs.jsonl", n=4))
    version = bench.build(KEY, folder.name, report)
    job = bench.launch(KEY, version.id, "tiny", "baseline", 2, 2, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.25, "kept")
    assert bench.queue.datasets_in_use(bench.store.root) == {folder.name}
    unused, _ = bench.new_upload(KEY, text_manifest(tmp_path / "other.jsonl"))
    age(folder, OLD)
    age(unused, OLD)

    gone = bench.sweep()["uploads"]
    assert sorted(gone) == sorted([f"{folder.name}/upload", unused.name])  # its uploaded files go; its versions stay
    assert folder.is_dir() and version.path.is_file()
    assert bench.datasets(KEY) == [version.id] and bench.dataset(KEY, version.id).n_pairs == 4
    assert job.config().data == str(version.path) and len(load_pairs(job.config().data)) == 4
    assert bench.progress(KEY, job.id)["dataset"] == version.id
    with pytest.raises(DatasetError, match="deleted after the retention time"):
        bench.build(KEY, folder.name)  # building anew needs the files again, and says so
    saved = bench.save_drafts(KEY, version.id, bench.drafts(KEY, version.id).assign(rationale="r. answer x"))
    assert saved.version == 2  # the dataset itself still takes saved rationales
    assert bench.sweep()["uploads"] == []  # nothing more goes: the dataset stays while its job exists


def fake_checkpoint(job: Job, step: int, complete: bool = True) -> Path:
    """What the trainer leaves in ``checkpoints/``: step-N, complete; or step-N.tmp, killed after its
    trainer_state.json (the last file written) and before the rename that completes it."""
    path = job.path / "checkpoints" / (f"step-{step:06d}" + ("" if complete else ".tmp"))
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(1000))
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    return path


def test_ended_jobs_lose_only_the_checkpoints_nothing_can_use(bench, tmp_path):
    folder, report = bench.new_upload(KEY, text_manifest(tmp_path / "pairs.jsonl", n=4))
    version = bench.build(KEY, folder.name, report)

    def launch(name):
        return bench.launch(KEY, version.id, "tiny", "baseline", 2, 2, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.25, name)

    cancelled, finished, queued = launch("cancelled"), launch("finished"), launch("queued")
    bench.cancel(KEY, cancelled.id)
    bench.cancel(KEY, finished.id)
    done = Job.load(finished.path)  # as a trainer that ran to the end leaves it
    done.status = "finished"
    done.save()
    (finished.path / "model").mkdir()
    (finished.path / "model" / "config.json").write_text("{}")
    (finished.path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    for job in (cancelled, finished, queued):
        fake_checkpoint(job, 2), fake_checkpoint(job, 4), fake_checkpoint(job, 6, complete=False)
    files = {j.id: tree(j.path) for j in (cancelled, finished, queued)}

    assert bench.sweep()["jobs"] == []  # they just ended: nothing is old yet
    later = time.time() + OLD
    gone = bench.sweep(now=later)["jobs"]
    assert sorted(gone) == sorted([f"{cancelled.id}/checkpoints/step-000002", f"{cancelled.id}/checkpoints/step-000006.tmp",
                                   *(f"{finished.id}/checkpoints/{n}" for n in ("step-000002", "step-000004",
                                                                                "step-000006.tmp"))])
    left = bench.queue.job(owner_id(KEY), cancelled.id).checkpoint
    assert left is not None and left.name == "step-000004"  # what a resume starts from
    assert tree(finished.path) == files[finished.id] - {p for p in files[finished.id] if p.startswith("checkpoints/")} \
        | {"checkpoints"}  # model, metrics, log, config and status stay
    assert bench.progress(KEY, finished.id)["metrics"]["loss"].tolist() == [1.0]
    assert tree(queued.path) == files[queued.id]  # a job that has not ended is never touched
    assert bench.resume(KEY, cancelled.id).status == "queued"  # and the cancelled one can still resume
    assert not [p for p in bench.root.iterdir() if p.name.startswith(".deleting")]
