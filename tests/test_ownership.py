"""Defect 2: sessions do not touch each other's work.

Two browser keys on one app: each sees and changes only its own uploads, dataset versions, jobs and
the model folders it named; what another session owns is refused with a sentence that says so,
through the service and through the Train and Models tabs' callbacks. No job trains here
(``max_running=0``): ownership is decided before any work.
"""

from __future__ import annotations

import re
import shutil

import gradio as gr
import pytest

from rge_demo.app.sessions import CONNECTION_PREFIX, SECRET_FILE, browser_secret, new_key, owner_id, session_key
from rge_demo.app.workbench import Workbench, WorkbenchError
from rge_demo.config import Settings
from rge_demo.errors import OwnershipError, RGEUserError, SessionKeyError
from rge_demo.models.loading import ModelError
from rge_demo.models.manager import ModelManager, default_specs
from rge_demo.training.worker import Job

A, B = new_key(), new_key()


@pytest.fixture()
def bench(tmp_path, tiny_dir):
    manager = ModelManager(Settings(cache_dir=tmp_path / "cache", device="cpu", model_roots=(tmp_path,)),
                           specs=default_specs())
    manager.register(tiny_dir, name="tiny")  # shared
    wb = Workbench(tmp_path / "jobs", manager, background=False, max_running=0)
    yield wb
    wb.close()


@pytest.fixture()
def a_work(bench):
    """Session A: the 40-pair sample upload built as v1, rationales saved as v2, a queued job on v2."""
    folder, report = bench.sample_upload(A)
    v1 = bench.build(A, folder.name, report)
    v2 = bench.save_drafts(A, v1.id, bench.drafts(A, v1.id))
    job = bench.launch(A, v2.id, "tiny", "rge", 2, 4, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.2, "A's job")
    return folder.name, v2, job


def test_another_session_cannot_read_or_change_an_upload_or_dataset(bench, a_work, tmp_path):
    upload, v2, _ = a_work
    other, _ = bench.sample_upload(B)  # B has its own 40 pairs
    refused = {
        "build": lambda: bench.build(B, upload, None, skip_bad=True),
        "report": lambda: bench.report(B, upload),
        "summary": lambda: bench.dataset_summary(B, v2.id),
        "draft": lambda: bench.drafts(B, v2.id),
        "save rationales": lambda: bench.save_drafts(B, v2.id, bench.drafts(A, f"{upload}/v1")),
        "launch": lambda: bench.launch(B, v2.id, "tiny", "baseline", 2, 4, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.2, ""),
    }
    assert issubclass(OwnershipError, PermissionError) and issubclass(OwnershipError, RGEUserError)
    for what, call in refused.items():
        with pytest.raises(OwnershipError, match=f"^upload {upload} belongs to another session$"):
            call()
    assert bench.datasets(A) == [v2.id, f"{upload}/v1"] and bench.dataset(A, v2.id).n_pairs == 40
    assert bench.datasets(B) == [] and bench.restore(B)["upload"] == other.name
    assert bench.jobs_table(B).empty
    assert bench.restore(A)["upload"] == upload and bench.restore(A)["dataset"] == v2.id


def test_another_session_cannot_watch_cancel_resume_or_use_a_job(bench, a_work):
    _, _, job = a_work
    for call in (lambda: bench.progress(B, job.id), lambda: bench.cancel(B, job.id),
                 lambda: bench.resume(B, job.id), lambda: bench.results(B, job.id),
                 lambda: bench.register_result(B, job.id)):
        with pytest.raises(OwnershipError, match=f"^job {job.id} belongs to another session$"):
            call()
    assert bench.queue.manager.job(job.id).status == "queued"  # untouched
    assert bench.jobs_table(A)["id"].tolist() == [job.id] and bench.job_ids(B) == []
    assert bench.cancel(A, job.id).status == "cancelled"  # the owner can
    with pytest.raises(RGEUserError, match="no job"):
        bench.progress(B, "../../etc")


def test_a_jobs_folders_are_its_sessions_even_named_by_path(bench, a_work, tiny_dir):
    """Another session typing the path of A's job output (a checkpoint, the model) gets a refusal,
    not A's fine-tuned weights; A itself may load them."""
    _, _, job = a_work
    checkpoint = shutil.copytree(tiny_dir, job.path / "checkpoints" / "step-000002")
    with pytest.raises(OwnershipError, match=f"belongs to another session's training job {job.id}"):
        bench.init_folder(B, str(checkpoint))
    with pytest.raises(OwnershipError, match="another session's training job"):
        bench.init_folder(B, str(job.path / "checkpoints" / ".." / "checkpoints" / "step-000002"))
    assert bench.init_folder(A, str(checkpoint)) == str(checkpoint.resolve())


def test_a_job_from_before_sessions_had_owners_is_read_only(bench, tmp_path):
    folder = bench.root / "old-job"
    folder.mkdir()
    Job("old-job", "old", str(folder), status="failed", created=1.0).save()
    for key in (A, B):
        assert bench.job_ids(key) == ["old-job"] and bench.progress(key, "old-job")["status"] == "failed"
        with pytest.raises(OwnershipError, match="made before sessions had owners and is read-only"):
            bench.resume(key, "old-job")


def test_a_folder_a_session_names_joins_its_own_model_list_only(bench, a_work, tiny_dir, tmp_path):
    _, v2, _ = a_work
    mine = shutil.copytree(tiny_dir, tmp_path / "b-base")
    assert bench.init_folder(B, str(mine)) == str(mine.resolve())
    assert "b-base" in bench.base_models(B) and "b-base" in bench.model_names(B)
    assert "b-base" not in bench.base_models(A) and "b-base" not in bench.model_names(A)
    assert "b-base" not in {r["name"] for r in bench.model_catalog(A)}
    assert "b-base" not in bench.shared_model_names()
    with pytest.raises(OwnershipError, match="^model b-base belongs to another session$"):
        bench.launch(A, v2.id, "b-base", "baseline", 2, 4, 1e-3, 0.1, 1.0, 0.03, False, 8, 0.2, "")
    with pytest.raises(OwnershipError):
        bench.check_model(A, "b-base")
    assert "tiny" in bench.model_names(A) and "tiny" in bench.model_names(B)  # shared stays shared

    again = Workbench(tmp_path / "jobs", bench.manager, background=False, max_running=0)  # after a restart
    try:
        assert "b-base" in again.model_names(B) and "b-base" not in again.model_names(A)
    finally:
        again.close()


def test_model_folders_by_path_only_under_the_operators_roots(tmp_path, tiny_dir):
    """A folder not in the registry loads by path only under RGE_MODEL_ROOTS; the answer comes from
    the path alone (a folder that is there and one that is not get the same sentence); a shared model
    named by its folder and a session's own job folders stay reachable."""
    from rge_demo.errors import FolderNotAllowed

    outside, inside = shutil.copytree(tiny_dir, tmp_path / "outside"), shutil.copytree(tiny_dir, tmp_path / "ok" / "m")
    shared = ModelManager(Settings(cache_dir=tmp_path / "cache", device="cpu"), specs=default_specs())
    shared.register(tiny_dir, name="tiny")
    off = Workbench(tmp_path / "jobs", shared, background=False, max_running=0)
    on = Workbench(tmp_path / "jobs2", ModelManager(Settings(cache_dir=tmp_path / "cache2", device="cpu",
                                                             model_roots=(tmp_path / "ok",))),
                   background=False, max_running=0)
    try:
        for folder in (outside, tmp_path / "missing", "/etc", "./x/y/z"):
            with pytest.raises(FolderNotAllowed, match=rf"^{re.escape(repr(str(folder)))} is read as a folder, and "
                                                       r"models from folders on the server are off in this app "
                                                       r"\(the operator can allow folders with RGE_MODEL_ROOTS\)"):
                off.resolve_model(A, str(folder))
        # QA: a name with a "/" in it is read as a relative folder; the sentence says so, quoting it
        with pytest.raises(FolderNotAllowed, match=r"^'☃ <b>x</b>' is read as a folder, and models from folders"):
            off.resolve_model(A, "☃ <b>x</b>")
        for folder in (outside, tmp_path / "missing", tmp_path / "ok" / ".." / "outside"):
            with pytest.raises(FolderNotAllowed, match="is not under a folder this app allows models from"):
                on.resolve_model(A, str(folder))
        assert on.resolve_model(A, str(inside)).source == str(inside.resolve())
        assert "m" in on.model_names(A) and "m" not in on.model_names(B)
        assert off.resolve_model(A, str(tiny_dir)).name == "tiny"  # a shared model named by its folder
        with pytest.raises(ModelError, match="not a registered model"):
            off.resolve_model(A, "tinyy")  # a misspelt name is not taken for a folder
        # a session's own job: its checkpoints load by path with no roots at all; another session's do not
        job = off.root / "20261207-000000-own-1"
        job.mkdir()
        Job(job.name, "own", str(job), status="finished", created=1.0, owner=owner_id(A)).save()
        ckpt = shutil.copytree(tiny_dir, job / "checkpoints" / "step-000002")
        assert off.resolve_model(A, str(ckpt)).source == str(ckpt.resolve())
        with pytest.raises(OwnershipError, match="another session's training job"):
            off.resolve_model(B, str(ckpt))
        # The Train tab's base model answers the same way, whether the folder is there or not.
        for folder in (outside, tmp_path / "missing"):
            with pytest.raises(FolderNotAllowed, match="is not under a folder this app allows models from"):
                on.init_folder(A, str(folder))
        # A folder a session added under wider roots (or before roots existed) stays that session's:
        # after the roots narrow, another session naming it is refused; its owner still loads it.
        narrowed = Workbench(tmp_path / "jobs2", ModelManager(Settings(
            cache_dir=tmp_path / "cache2", device="cpu", model_roots=(tmp_path / "elsewhere",))),
            background=False, max_running=0)
        try:
            assert "m" in narrowed.model_names(A)
            with pytest.raises(FolderNotAllowed):
                narrowed.resolve_model(B, str(inside))
            assert narrowed.resolve_model(A, str(inside)).name == "m" and "m" not in narrowed.model_names(B)
        finally:
            narrowed.close()
        # A hub id is public: a second session naming it gets it too, and keeps it after a restart.
        assert off.resolve_model(A, "someone/some-model").kind == "hub"
        assert off.resolve_model(B, "someone/some-model").name == "someone/some-model"
        restarted = Workbench(tmp_path / "jobs", ModelManager(Settings(cache_dir=tmp_path / "cache", device="cpu")),
                              background=False, max_running=0)
        try:
            assert "someone/some-model" in restarted.model_names(B)
        finally:
            restarted.close()
    finally:
        off.close()
        on.close()


def test_the_apps_working_directory_changes_no_answer(tmp_path, tiny_dir, monkeypatch):
    """A name or an owner/name text is never read as a folder of the app's working directory: whether
    such a folder is there does not change what a session is told, nor what it loads."""
    from rge_demo.models.loading import CheckpointError, ModelError

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_dir, tmp_path / "secret")
    shutil.copytree(tiny_dir, tmp_path / "org" / "name")
    bench = Workbench(tmp_path / "jobs", ModelManager(Settings(cache_dir=tmp_path / "cache", device="cpu")),
                      background=False, max_running=0)
    try:
        for name in ("secret", "nosuch"):  # bare names: not registered, whatever the folder holds
            with pytest.raises(ModelError, match=f"^{name}: not a registered model"):
                bench.resolve_model(A, name)
        spec = bench.resolve_model(A, "org/name")  # a hub id, though ./org/name is a model folder
        assert (spec.kind, spec.source) == ("hub", "org/name")
        with pytest.raises(CheckpointError, match="org/name"):
            spec.folder()  # looked up in the hub cache only (offline here), not in ./org/name
        for name in ("org/name", "org/none"):  # the Train tab's base model: a hub id either way
            with pytest.raises(WorkbenchError, match=f"base model '{name}' is a hub id"):
                bench.init_folder(A, name)
    finally:
        bench.close()


def test_session_keys(bench, tmp_path):
    assert session_key(A) == A and owner_id(A) != owner_id(B) and len(owner_id(A)) == 32
    assert session_key(None, "abcdefghijk") == CONNECTION_PREFIX + "abcdefghijk"  # an API client without a key
    for bad in ("short", "x" * 200, "has space in it!!", 12345):
        with pytest.raises(SessionKeyError):
            session_key(bad, "abcdefghijk")
    with pytest.raises(SessionKeyError, match="no session key"):
        session_key(None, None)
    with pytest.raises(SessionKeyError):
        bench.datasets("")
    bench.sample_upload(A)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "jobs").rglob("*.json"))
    assert A.encode() not in stored and owner_id(A).encode() in stored  # only the key's hash is written
    assert bench.browser_secret == Workbench(tmp_path / "jobs", bench.manager, background=False).browser_secret


def test_the_browser_secret_is_made_once_whole_and_an_empty_one_is_replaced(tmp_path):
    import os
    import stat

    first = browser_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    assert len(first) >= 32 and browser_secret(tmp_path) == first == path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no temporary file left
    path.write_text("")  # left by a crash between creating the file and writing it
    again = browser_secret(tmp_path)
    assert again and again != first and browser_secret(tmp_path) == again


def fn(blocks: gr.Blocks, api_name: str):
    return next(f.fn for f in blocks.fns.values() if f.api_name == api_name)


def test_the_tabs_pass_the_browser_key(tmp_path, tiny_dir):
    """The Train and Models tabs' callbacks act as the browser whose key they get."""
    from rge_demo.app.demo import Demo
    from rge_demo.ui.layout import build_blocks

    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(tiny_dir), device="cpu", model_roots=(tmp_path,)),
                galleries_dir=tmp_path)
    try:
        demo.workbench.queue.manager.max_running = 0
        blocks = build_blocks(demo)
        upload, *_ = fn(blocks, "sample_upload")(A, None)
        with pytest.raises(gr.Error, match=f"upload {upload} belongs to another session"):
            fn(blocks, "build_dataset")(B, upload, None, False, None)
        dataset, info = fn(blocks, "build_dataset")(A, upload, None, False, None)
        assert dataset["value"] == f"{upload}/v1" and "40 pair(s)" in info

        mine = shutil.copytree(tiny_dir, tmp_path / "a-model")
        with pytest.raises(gr.Error, match="not a registered model"):
            fn(blocks, "load_model")("no-such-model", "auto", "none", A, None)
        spec = demo.workbench.resolve_model(A, str(mine))  # as the Models tab does for a folder
        with pytest.raises(gr.Error, match=f"model {spec.name} belongs to another session"):
            fn(blocks, "load_model")(spec.name, "auto", "none", B, None)
        with pytest.raises(gr.Error, match="belongs to another session"):
            fn(blocks, "unload_model")(spec.name, None, B, None)
        assert spec.name in demo.workbench.model_names(A) and spec.name not in demo.workbench.model_names(B)
    finally:
        demo.workbench.close()


def test_a_model_that_fails_to_load_does_not_join_the_list(bench, tiny_dir, tmp_path):
    """The Models tab and the Reasoner field load through use_model: a hub id that cannot be fetched
    (offline) or a broken folder is refused and stays off the session's list and the registry."""
    broken = shutil.copytree(tiny_dir, tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    for name in ("someorg/some-model", str(broken)):
        with pytest.raises(ModelError):
            bench.use_model(A, name, lambda spec: bench.manager.load(spec.name))
        assert not {"someorg/some-model", "broken"} & set(bench.model_names(A))
        assert not {"someorg/some-model", "broken"} & {s.name for s in bench.manager.specs()}
    assert bench.use_model(A, "tiny", lambda spec: bench.manager.load(spec.name)).name == "tiny"
    fine = shutil.copytree(tiny_dir, tmp_path / "fine")
    assert bench.use_model(A, str(fine), lambda spec: bench.manager.load(spec.name)).name == "fine"
    assert "fine" in bench.model_names(A) and "fine" not in bench.model_names(B)
    with pytest.raises(ModelError):  # a model already on the list stays there when a later load fails
        bench.use_model(A, "fine", lambda spec: bench.manager.load(str(broken)))
    assert "fine" in bench.model_names(A)


def test_a_session_cannot_reload_or_unload_a_model_other_sessions_use(tmp_path, tiny_dir):
    """QA: one visitor's "Load and use" as float16 reloaded the shared default for everyone, and its
    "Unload" unloaded it for everyone. A model one session alone added stays that session's to change."""
    from rge_demo.app.demo import Demo
    from rge_demo.ui.layout import build_blocks

    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(tiny_dir), device="cpu", model_roots=(tmp_path,)),
                galleries_dir=tmp_path)
    try:
        blocks = build_blocks(demo)
        load, unload = fn(blocks, "load_model"), fn(blocks, "unload_model")
        shared = demo.model().name
        with pytest.raises(gr.Error, match=rf"'{shared} is shared with other sessions and loaded as float32, no "
                                           "quantization: loading it as bfloat16, no quantization would change it"):
            load(shared, "bfloat16", "none", A, None)
        with pytest.raises(gr.Error, match=rf"'{shared} is shared with other sessions: unloading it would unload it"):
            unload(shared, None, A, None)
        assert demo.model().dtype == "float32" and shared in {m.name for m in demo.manager.loaded()}
        assert load(shared, "auto", "none", A, None)[0] == shared  # as it is loaded: fine

        # QA: the first session to load a shared model chooses its settings; "auto" then takes it as it is
        # (it was refused, though the refusal itself advised "auto"), and the refusal names what it has
        spare = demo.manager.register(shutil.copytree(tiny_dir, tmp_path / "spare"), name="spare").name
        assert load(spare, "bfloat16", "none", A, None)[0] == spare
        assert load(spare, "auto", "none", B, None)[0] == spare and demo.model(spare).dtype == "bfloat16"
        with pytest.raises(gr.Error, match=r"loaded as bfloat16, no quantization: loading it as float32, no "
                                           r"quantization would change it for them too; choose dtype auto and no "
                                           r"quantization to use it as it is \(bfloat16, no quantization\)"):
            load(spare, "float32", "none", B, None)

        mine = str(shutil.copytree(tiny_dir, tmp_path / "a-copy"))
        name = load(mine, "float32", "none", A, None)[0]
        assert load(name, "bfloat16", "none", A, None)[0] == name  # A's alone: A may change it
        assert demo.model(name).dtype == "bfloat16"
        using, status = unload(mine, name, A, None)[:2]  # named by its folder (QA: it stayed "in use")
        assert using is None and shared in status
        assert name not in {m.name for m in demo.manager.loaded()}
        load(mine, "float32", "none", B, None)  # B names the same folder: now the two share it
        with pytest.raises(gr.Error, match=f"'{name} is shared with other sessions and loaded as float32"):
            load(name, "bfloat16", "none", A, None)
    finally:
        demo.workbench.close()
