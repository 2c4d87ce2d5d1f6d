"""The job queue's app side: who may see and change a job, its progress as tables, before/after P@1.

The process side (the queue on disk, starting, signalling and reaping trainer processes) is
:class:`rge_demo.training.worker.JobManager`. Here every request names its session's owner id
(:func:`rge_demo.app.sessions.owner_id`): a session lists, watches, cancels, resumes and evaluates
its own jobs only; jobs from before sessions had owners are read-only for everyone.

A session cannot queue a second job under the name of one of its jobs that is queued or running
(:meth:`JobQueue.submit`): a double click on Launch makes one job, not two.

Retention (:meth:`JobQueue.sweep`, run from the queue's polling thread): once a job has been
finished, failed or cancelled for longer than the retention time, its scratch files go, i.e. the
trainer's checkpoints that nothing can use any more: every checkpoint of a finished job that has
its model, and of a cancelled or failed job every checkpoint but the last complete one (the one a
resume starts from; half-written ``*.tmp`` ones go too). What a user may still load or read stays:
``model/`` (the fine-tuned model, maybe registered as ``job-<id>``), ``cold-start-model/``, the
config, status, log, metrics and before/after results. Queued and running jobs are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from rge_demo.data.items import atomic_write_text
from rge_demo.training.config import CHECKPOINTS, TrainConfig
from rge_demo.training.worker import ACTIVE, DONE, LOG_FILE, METRICS_FILE, Job, JobError, JobManager, tail

from .messages import public_message  # the server's own paths are not shown (a log names its python)
from .sessions import check_owner, file_lock

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["step", "phase", "loss", "lm_loss", "contrastive_loss", "direct_loss", "reward", "retrieval_reward",
                  "kl", "lr", "seconds"]  # reward, retrieval_reward and kl: eg-rl jobs
JOB_COLUMNS = ["id", "name", "dataset", "status", "attempts", "checkpoint", "error"]
RESULTS_FILE = "before_after.csv"
TRASH = ".deleting-"  # scratch being deleted is renamed to this prefix under the jobs root first
SUBMIT_LOCK = ".submit.lock"  # held around "is a job of this name queued or running?" + submit
WAITING = ("queued", "running")  # a job of this name in one of these states refuses a launch of the same name


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl that may be being written, or was cut short by a crash.

    A line that is not a whole JSON object with an integer ``step`` (half-written, binary garbage
    after a power cut, not UTF-8) is skipped, so one bad line never hides the curve.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for raw in data.splitlines():
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and not isinstance(rec["step"], bool):
            out.append(rec)
    return out


class _HousekeepingManager(JobManager):
    """A :class:`JobManager` whose polls also run the app's housekeeping, at most once every
    ``every`` seconds and never two at once; so the retention sweep needs no thread of its own. With
    a polling thread only that thread runs it (a request never waits for a sweep); without one (tests,
    scripts) the polls that requests make do."""

    def __init__(self, *args, **kwargs):
        self._chore: Callable[[], object] | None = None
        self._every = 0.0
        self._next = 0.0
        self._chore_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def housekeeping(self, chore: Callable[[], object] | None, every: float) -> None:
        self._chore, self._every, self._next = chore, float(every), time.monotonic() + float(every)

    def poll(self) -> list[Job]:
        jobs = super().poll()
        chore = self._chore
        if self._thread is not None and threading.current_thread() is not self._thread:
            return jobs
        if chore is not None and time.monotonic() >= self._next and self._chore_lock.acquire(blocking=False):
            try:
                self._next = time.monotonic() + self._every
                chore()
            except Exception:  # housekeeping must never break a poll (or the request that polled)
                log.exception("housekeeping failed")
            finally:
                self._chore_lock.release()
        return jobs


class JobQueue:
    """Training jobs per session over one :class:`JobManager` (one queue, one polling thread per app)."""

    def __init__(self, jobs_root: str | os.PathLike, *, background: bool = True, max_running: int = 1,
                 poll_interval: float = 2.0):
        self.manager = _HousekeepingManager(jobs_root, background=background, max_running=max_running,
                                            poll_interval=poll_interval)

    def close(self) -> None:
        self.manager.close()

    def poll(self) -> None:
        self.manager.poll()

    def housekeeping(self, chore: Callable[[], object] | None, every: float) -> None:
        """Run ``chore()`` from the polls (the polling thread's, every ``poll_interval``; the requests'
        when there is no thread), at most once every ``every`` seconds; ``None`` stops it."""
        self.manager.housekeeping(chore, every)

    # -- retention -----------------------------------------------------------------------------
    def datasets_in_use(self, uploads_root: str | os.PathLike) -> set[str]:
        """The upload ids whose datasets existing jobs train on (by the job's recorded dataset id, and
        by its config's pairs file when that lies under ``uploads_root``)."""
        root = Path(uploads_root).resolve()
        used = set()
        for job in self.manager.jobs():
            if job.dataset:
                used.add(str(job.dataset).split("/", 1)[0])
            try:
                data = Path(job.config().data).resolve()
            except Exception:  # an unreadable config still protects its recorded dataset above
                continue
            if data.is_relative_to(root) and data != root:
                used.add(data.relative_to(root).parts[0])
        return used

    def sweep(self, max_age_s: float, now: float | None = None) -> list[str]:
        """Delete the scratch files (see the module's docstring) of jobs that ended more than
        ``max_age_s`` seconds ago; returns what went, as ``<job id>/checkpoints/<name>``."""
        now = time.time() if now is None else now
        root = self.manager.root
        for left in root.glob(f"{TRASH}*"):  # a sweep that stopped midway
            shutil.rmtree(left, ignore_errors=True)
        doomed: list[tuple[str, Path]] = []
        with self.manager._locked():  # no resume (re)starts a trainer while its checkpoints move
            for job in self.manager.jobs():
                ended = job.ended or _mtime(job.path / "status.json")
                if job.status not in DONE or now - ended <= max_age_s:
                    continue
                folder = job.path / CHECKPOINTS
                if not folder.is_dir():
                    continue
                keep = None if job.status == "finished" and job.model_dir is not None else job.checkpoint
                for path in sorted(folder.iterdir()):
                    if keep is not None and path == keep:
                        continue
                    name = f"{job.id}/{CHECKPOINTS}/{path.name}"
                    target = root / f"{TRASH}{job.id}-{path.name}-{uuid.uuid4().hex[:6]}"
                    try:
                        path.rename(target)
                    except OSError as e:
                        log.warning("could not delete %s: %s", name, e)
                        continue
                    doomed.append((name, target))
        for _, target in doomed:  # the slow part, outside the queue's lock
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        if doomed:
            log.info("retention: deleted %s", ", ".join(name for name, _ in doomed))
        return [name for name, _ in doomed]

    # -- access --------------------------------------------------------------------------------
    def job(self, owner: str, job_id: str, *, change: bool = False) -> Job:
        """The job ``owner`` may read (``change``: may cancel / resume); else a one-sentence error."""
        if not job_id:
            raise JobError("choose a job")
        try:
            job = self.manager.job(str(job_id))
        except JobError:
            raise JobError(f"no job {str(job_id)[:80]!r}: choose one of your jobs") from None
        check_owner(f"job {job.id}", job.owner, owner, change=change)
        return job

    def jobs(self, owner: str) -> list[Job]:
        """``owner``'s jobs and the shared ones from before sessions had owners, oldest first."""
        return [j for j in self.manager.jobs() if j.owner in (owner, "")]

    def jobs_table(self, owner: str) -> pd.DataFrame:
        """id, name, dataset (version), status, attempts, the checkpoint a resume starts from, error; newest
        first, so the running and queued jobs are the rows in view (QA: they were below the table's fold)."""
        rows = [{"id": j.id, "name": j.name, "dataset": j.dataset, "status": j.status, "attempts": j.attempts,
                 "checkpoint": j.checkpoint.name if j.checkpoint else "",
                 "error": public_message(j.error.splitlines()[0]) if j.error else ""}
                for j in reversed(self.jobs(owner))]
        return pd.DataFrame(rows, columns=JOB_COLUMNS)

    # -- requests ------------------------------------------------------------------------------
    def submit(self, owner: str, cfg: TrainConfig, name: str, dataset: str = "") -> Job:
        """Queue a job of ``owner``; refused while one of its jobs of the same name is queued or running
        (a double click on Launch). The check and the submit hold one lock across threads and processes,
        so two requests arriving together make one job."""
        with file_lock(self.manager.root / SUBMIT_LOCK):
            self._refuse_namesake(owner, name)
            return self.manager.submit(cfg, name=name, owner=owner, dataset=dataset)

    def cancel(self, owner: str, job_id: str) -> Job:
        return self.manager.cancel(self.job(owner, job_id, change=True).id)

    def resume(self, owner: str, job_id: str, **overrides) -> Job:
        """Queue a cancelled or failed job again; refused, like a launch, while another job of its name waits."""
        job = self.job(owner, job_id, change=True)
        with file_lock(self.manager.root / SUBMIT_LOCK):
            self._refuse_namesake(owner, job.name, but=job.id, instead="wait for it to end or cancel it")
            return self.manager.resume(job.id, **overrides)

    def _refuse_namesake(self, owner: str, name: str, but: str = "",
                         instead: str = "cancel it or choose another name") -> None:
        """JobError if a job of ``owner`` named ``name`` (other than ``but``) is queued or running."""
        self.manager.poll()  # reap a job that just ended: it no longer blocks its name
        for job in self.manager.jobs():
            if job.owner == owner and job.name == name and job.id != but and job.status in WAITING:
                raise JobError(f"job {name!r} is already {job.status} ({job.id}): {instead}")

    # -- watching ------------------------------------------------------------------------------
    def progress(self, owner: str, job_id: str, last: int = 500) -> dict:
        """Status, step / total, ETA, the last metrics records (a DataFrame), samples and the log tail."""
        job = self.job(owner, job_id)
        records = read_metrics(job.path / METRICS_FILE)
        try:
            total = job.config().total_steps
        except Exception:  # a config the trainer will reject: the log says why
            total = 0
        if records and isinstance(records[-1].get("total_steps"), int):
            total = records[-1]["total_steps"]
        step = records[-1]["step"] if records else 0
        recent = [r["seconds"] for r in records[-20:] if isinstance(r.get("seconds"), (int, float))]
        eta = sum(recent) / len(recent) * max(0, total - step) if recent and job.status in ACTIVE else None
        metrics = pd.DataFrame(records[-last:]).reindex(columns=METRIC_COLUMNS) if records else \
            pd.DataFrame(columns=METRIC_COLUMNS)
        samples = [{"step": r["step"], "rationale": str(s)} for r in records[-5:]
                   for s in (r.get("samples") if isinstance(r.get("samples"), list) else [])]
        end = job.ended if job.status in DONE and job.ended else time.time()
        return {"id": job.id, "name": job.name, "status": job.status, "step": step, "total_steps": total,
                "eta_seconds": eta, "elapsed_seconds": end - job.started if job.started else 0.0,
                "attempt": job.attempts,  # elapsed_seconds counts from this attempt's start
                "metrics": metrics, "samples": samples, "log_tail": public_message(tail(job.path / LOG_FILE)),
                "error": public_message(job.error), "model_dir": str(job.model_dir) if job.model_dir else None,
                "dataset": job.dataset, "checkpoint": str(job.checkpoint) if job.checkpoint else None}

    def finished(self, owner: str, job_id: str) -> Job:
        """A finished job of ``owner`` with its trained model; else an error that says its state."""
        job = self.job(owner, job_id)
        if job.status != "finished" or job.model_dir is None:
            raise JobError(f"job {job.id} is {job.status}: there is no trained model yet")
        return job

    def results(self, owner: str, job_id: str, max_queries: int = 64, encoder_factory=None) -> pd.DataFrame:
        """Before/after P@1 on the job's validation share, both modes (computed once, then read from disk)."""
        job = self.finished(owner, job_id)
        saved = job.path / RESULTS_FILE
        if saved.is_file():
            return pd.read_csv(saved)
        table = before_after(job, encoder_factory=encoder_factory, max_queries=max_queries)
        table["p@1"] = table["p@1"].round(4)
        atomic_write_text(saved, table.to_csv(index=False))  # a crash mid-write must not leave half a table
        return table


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()  # unknown: as if it just changed (nothing is deleted on a guess)


# ------------------------------------------------------------------------------ before / after
def _default_encoder(source: str):
    """An :class:`Encoder` on CPU for a checkpoint folder or a micro size name (the trainer's loader)."""
    from rge_demo.embedding.encoder import Encoder
    from rge_demo.training.trainer import load_model

    model, processor = load_model(source, "cpu")
    return Encoder(model.eval(), processor)


def _eval_tasks(queries: list, pairs: list) -> list:
    """The validation pairs as evaluation tasks: per task, the distinct targets among all pairs."""
    from rge_demo.analysis.evaluate import EvalCandidate, EvalItem, EvalQuery, EvalTask

    def item(x) -> EvalItem:
        return EvalItem(x.instruction, x.text, x.image)

    tasks = []
    for task in sorted({q.task for q in queries}):
        gallery = list({p.target_key: p for p in pairs if p.task == task}.values())
        keys = [p.target_key for p in gallery]
        asked = [q for q in queries if q.task == task]
        tasks.append(EvalTask(task, task, "validation",
                              [EvalQuery(f"{task}-{i}", item(q.query), keys.index(q.target_key)) for i, q in enumerate(asked)],
                              [EvalCandidate(k, p.target.text or k, item(p.target)) for k, p in zip(keys, gallery)],
                              source="upload"))
    return tasks


def before_after(job: Job, encoder_factory=None, max_queries: int = 64) -> pd.DataFrame:
    """P@1 on the job's validation share, base model (``cfg.init``) vs trained (``job/model``), both modes.

    ``encoder_factory(path_or_size) -> Encoder`` (default: the trainer's loader on CPU). Without a
    validation share (``val_share`` 0) the first training pairs are used, which flatters "after":
    the ``split`` column says so. Returns rows (model, mode, p@1, n, split).
    """
    from rge_demo.analysis.evaluate import evaluate
    from rge_demo.training.data import load_pairs, split_pairs

    cfg = job.config()
    if job.model_dir is None:
        raise JobError(f"job {job.id} has no trained model yet (status {job.status})")
    if cfg.data == "world":
        raise JobError("before/after compares on an uploaded pairs file; this job trained on the world")
    pairs = load_pairs(cfg.data)
    _, val = split_pairs(pairs, cfg.val_share, seed=cfg.seed)
    split = "validation" if val else "train (no validation share)"
    val = (val or pairs)[:max_queries]
    tasks = _eval_tasks(val, pairs)
    factory = encoder_factory or _default_encoder
    rows = []
    for label, source in (("before", cfg.init), ("after", str(job.model_dir))):
        encoder = factory(source)
        for mode in ("direct", "reason"):
            run = evaluate(encoder, tasks, mode=mode, max_new_tokens=cfg.max_new_tokens, model_name=label)
            rows.append({"model": label, "mode": mode, "p@1": run.summary()["metrics"]["overall"]["p@1"],
                         "n": len(val), "split": split})
    return pd.DataFrame(rows)


__all__ = ["JOB_COLUMNS", "METRIC_COLUMNS", "JobQueue", "before_after", "read_metrics"]
