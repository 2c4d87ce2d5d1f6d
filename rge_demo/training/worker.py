"""Background training jobs, the process side: a queue on disk, one trainer subprocess per device at a time.

Each job is a folder ``jobs_root/<job_id>/`` holding ``config.json`` (the job's :class:`TrainConfig`
with ``output_dir`` set to the folder), ``status.json`` (written atomically), ``log.txt`` (the
trainer's stdout and stderr), ``exit.json`` (the worker's exit code, written as it exits) and what
the trainer writes there (``metrics.jsonl``, ``checkpoints/``, ``model/``). The state lives on disk
only, so the job list survives a page reload and an app restart: a new :class:`JobManager` on the
same root picks it up, and the exit record tells it how a worker it never watched ended (a clean
cancel with a checkpoint reads "cancelled", not "failed").

:meth:`JobManager.poll` does all the work (reap finished processes, start the next queued job); the
UI's timer calls it, and a daemon thread calls it every ``poll_interval`` seconds so jobs advance
with no page open. A file lock on the root makes polls of several managers safe.
A worker runs ``python -m rge_demo.training.worker --config job/config.json``: that is
``python -m rge_demo train --config ...`` plus the exit record. SIGTERM makes the trainer
checkpoint and exit with code 3 (cancelled); running it again resumes from the last checkpoint.
Reading progress, ownership and before/after evaluation are the app's side: :mod:`rge_demo.app.jobs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import runpy
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from rge_demo.data.items import atomic_write_text, process_lock
from rge_demo.errors import RGEUserError

from .config import RUN_FIELDS, TrainConfig, latest_checkpoint

log = logging.getLogger(__name__)

STATUS_FILE, CONFIG_FILE, LOG_FILE, METRICS_FILE, MODEL_DIR = "status.json", "config.json", "log.txt", "metrics.jsonl", "model"
EXIT_FILE = "exit.json"
ACTIVE = ("running", "cancelling")
DONE = ("finished", "cancelled", "failed")
CANCEL_GRACE_S = 60.0  # a cancelled trainer gets this long to checkpoint and stop before SIGKILL
EXIT_CANCELLED = 3  # python -m rge_demo train: stopped cleanly with a checkpoint



class JobError(RGEUserError, ValueError):
    """A job request that cannot be done (unknown id, wrong state); the message says why."""


@dataclass
class Job:
    """One training job as stored in ``status.json``. ``status``: queued, running, cancelling,
    finished, cancelled or failed."""

    id: str
    name: str
    dir: str
    status: str = "queued"
    created: float = 0.0
    queued_at: float = 0.0
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    returncode: int | None = None
    error: str = ""
    cancel_requested: bool = False
    cancel_at: float = 0.0  # when the SIGTERM went: past the manager's grace a SIGKILL follows
    attempts: int = 0
    owner: str = ""  # the owner id of the session that launched it ("" for jobs from before owners)
    dataset: str = ""  # the dataset version it trains on ("<upload>/v<N>"), when it came from an upload

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def model_dir(self) -> Path | None:
        model = self.path / MODEL_DIR
        return model if (model / "config.json").exists() else None

    @property
    def checkpoint(self) -> Path | None:
        """The last complete checkpoint the trainer saved (the one a resume starts from), if any."""
        return latest_checkpoint(self.path)

    def config(self) -> TrainConfig:
        return TrainConfig.from_file(self.config_path)

    def exit_record(self) -> dict | None:
        """What the worker of the current attempt wrote as it exited (``{"code", "attempt", ...}``), if it did."""
        try:
            record = json.loads((self.path / EXIT_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = isinstance(record, dict) and isinstance(record.get("code"), int) and record.get("attempt") == self.attempts
        return record if ok else None

    def save(self) -> None:
        atomic_write_text(self.path / STATUS_FILE, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Job:
        """The job whose status file is in ``folder``; :class:`JobError` when the file is damaged."""
        try:
            data = json.loads((folder / STATUS_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise JobError(f"job {folder.name}: its {STATUS_FILE} is damaged ({type(e).__name__})") from None
        if not isinstance(data, dict):
            raise JobError(f"job {folder.name}: its {STATUS_FILE} holds a {type(data).__name__}, not a job")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def tail(path: Path, lines: int = 30, max_bytes: int = 16_384) -> str:
    """The last ``lines`` lines of a text file (at most ``max_bytes`` read), "" if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def _process_state(pid: int, config_path: Path) -> tuple[str, int | None]:
    """("running" | "exited" | "gone", exit code) of a pid this manager holds no handle for."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)  # our child (an earlier manager in this process)
        if done == pid:
            return "exited", os.waitstatus_to_exitcode(status)
        return "running", None
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone", None
    except PermissionError:
        return "gone", None  # someone else's process: the pid was reused
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # guard against a reused pid: it must be this job's trainer
        with contextlib.suppress(OSError):
            return ("running", None) if str(config_path) in cmdline.read_bytes().decode(errors="replace") else ("gone", None)
    return "running", None


class JobManager:
    """Queue, run, cancel, resume and watch training jobs under ``jobs_root``.

    ``max_running`` jobs run at once (one per device: the default 1). ``background=False`` starts
    no polling thread (tests and scripts call :meth:`poll` themselves).
    """

    def __init__(self, jobs_root: str | os.PathLike, *, max_running: int = 1, poll_interval: float = 2.0,
                 background: bool = True, cancel_grace_s: float = CANCEL_GRACE_S):
        self.root = Path(jobs_root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_running = max_running
        self.cancel_grace_s = cancel_grace_s
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        self.poll()  # recover: jobs whose process vanished while no manager watched become failed
        if background:
            self._thread = threading.Thread(target=self._loop, args=(poll_interval,), name="rge-jobs", daemon=True)
            self._thread.start()

    # -- state --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        with self._lock, process_lock(self.root / ".lock"):
            yield

    def _read_all(self) -> list[Job]:
        jobs = []
        for folder in sorted(self.root.iterdir()):
            if (folder / STATUS_FILE).is_file():
                try:
                    jobs.append(Job.load(folder))
                except (JobError, TypeError, OSError) as e:
                    log.warning("skipping %s: unreadable %s (%s)", folder, STATUS_FILE, e)
        return sorted(jobs, key=lambda j: j.created)

    def jobs(self) -> list[Job]:
        """Every job under the root, oldest first (read from disk)."""
        return self._read_all()

    def job(self, job_id: str) -> Job:
        folder = self.root / job_id
        if not re.fullmatch(r"[\w.-]+", job_id) or not (folder / STATUS_FILE).is_file():
            raise JobError(f"no job {job_id!r} under {self.root}")
        return Job.load(folder)

    # -- requests -----------------------------------------------------------------------------
    def submit(self, cfg: TrainConfig, name: str = "", *, owner: str = "", dataset: str = "") -> Job:
        """Create a queued job running ``cfg`` (its output_dir becomes the job folder); starts it if free.

        ``owner`` and ``dataset`` are recorded in the job's status (the app layer checks them).
        """
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40] or "job"
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{uuid.uuid4().hex[:6]}"
        folder = self.root / job_id
        folder.mkdir()
        paths = {k: str(Path(getattr(cfg, k)).resolve()) for k in ("data", "init") if Path(getattr(cfg, k)).exists()}
        cfg = dataclasses.replace(cfg, output_dir=str(folder), **paths)
        atomic_write_text(folder / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
        (folder / LOG_FILE).touch()
        now = time.time()
        with self._locked():
            Job(job_id, name or slug, str(folder), created=now, queued_at=now, owner=owner, dataset=dataset).save()
        log.info("queued job %s", job_id)
        self.poll()
        return self.job(job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job, or SIGTERM a running one (it checkpoints, then reads "cancelled")."""
        with self._locked():
            job = self.job(job_id)
            if job.status == "queued":
                job.status, job.ended = "cancelled", time.time()
            elif job.status in ACTIVE:
                job.status, job.cancel_requested, job.cancel_at = "cancelling", True, time.time()
                self._signal(job, signal.SIGTERM)
            else:
                raise JobError(f"job {job_id} is {job.status}: nothing to cancel")
            job.save()
        return job

    def resume(self, job_id: str, **overrides) -> Job:
        """Queue a cancelled or failed job again; the trainer resumes from its last checkpoint.

        ``overrides`` change TrainConfig fields first (e.g. ``steps=`` to train longer).
        """
        with self._locked():
            job = self.job(job_id)
            if job.status not in ("cancelled", "failed"):
                raise JobError(f"job {job_id} is {job.status}: only cancelled or failed jobs resume")
            if overrides:
                run = job.config()
                if changed := sorted(k for k in (*RUN_FIELDS, "output_dir") if k in overrides
                                     and overrides[k] != getattr(run, k)):
                    raise JobError(f"job {job_id}: a resume continues the same run; {', '.join(changed)} cannot "
                                   "change (start a new job instead)")
                cfg = TrainConfig.from_file(job.config_path, **overrides)
                atomic_write_text(job.config_path, json.dumps(cfg.to_dict(), indent=2) + "\n")
            job.status, job.queued_at, job.error, job.returncode = "queued", time.time(), "", None
            job.save()
        self.poll()
        return self.job(job_id)

    # -- the scheduler ------------------------------------------------------------------------
    def poll(self) -> list[Job]:
        """Reap ended workers, start queued jobs while a slot is free; returns the job list."""
        with self._locked():
            jobs = self._read_all()
            for job in jobs:
                if job.status in ACTIVE:
                    self._reap(job)
            running = sum(j.status in ACTIVE for j in jobs)
            for job in sorted((j for j in jobs if j.status == "queued"), key=lambda j: j.queued_at):
                if running >= self.max_running:
                    break
                self._start(job)
                running += 1
            return jobs

    def _reap(self, job: Job) -> None:
        proc = self._procs.get(job.id)
        if proc is not None:
            code = proc.poll()
            if code is None:
                self._force_cancel(job)
                return
            del self._procs[job.id]
        else:
            state, code = _process_state(job.pid, job.config_path) if job.pid else ("gone", None)
            if state == "running":
                self._force_cancel(job)
                return
        self._finish(job, code)

    def _signal(self, job: Job, sig: int) -> None:
        """Send ``sig`` to the job's trainer: our child, or (after an app restart) its pid once
        /proc shows it is still this job's process, never a reused pid."""
        proc = self._procs.get(job.id)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if proc is not None:
                proc.send_signal(sig)
            elif job.pid and _process_state(job.pid, job.config_path)[0] == "running":
                os.kill(job.pid, sig)

    def _force_cancel(self, job: Job) -> None:
        """A trainer still running ``cancel_grace_s`` after its SIGTERM (stuck before its handler, e.g.
        loading the model) is killed: a cancel always ends, and the queue moves on."""
        if job.status == "cancelling" and job.cancel_at and time.time() - job.cancel_at > self.cancel_grace_s:
            log.warning("job %s still running %.0f s after its cancel: killing it", job.id, time.time() - job.cancel_at)
            self._signal(job, signal.SIGKILL)

    def _finish(self, job: Job, code: int | None) -> None:
        if code is None:  # a worker this manager never started (an app restart): it left its exit code
            record = job.exit_record()
            code = record["code"] if record else None
        job.ended, job.returncode, job.pid = time.time(), code, None
        if code == 0 or (code is None and job.model_dir is not None):
            job.status = "finished"
        elif code == EXIT_CANCELLED or (job.cancel_requested and code in (-signal.SIGTERM, -signal.SIGKILL, None)):
            # -SIGTERM / no record: stopped by our SIGTERM before the trainer set its handler; a resume
            # starts from the last checkpoint (or from the start when there is none)
            job.status = "cancelled"
        else:
            why = ("the worker process vanished while no manager watched it" if code is None
                   else f"worker exited with code {code}" + (f" (signal {-code})" if code < 0 else ""))
            log_tail = tail(job.path / LOG_FILE)
            said = [line[len("error: "):] for line in log_tail.splitlines() if line.startswith("error: ")]
            job.status, job.error = "failed", why + (f": {said[-1]}" if said else "") + "\n" + log_tail
        job.cancel_requested, job.cancel_at = False, 0.0
        job.save()
        log.info("job %s %s (exit code %s)", job.id, job.status, code)

    def _start(self, job: Job) -> None:
        cmd = [sys.executable, "-m", __name__, "--config", str(job.config_path), "--attempt", str(job.attempts + 1)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        (job.path / EXIT_FILE).unlink(missing_ok=True)
        with open(job.path / LOG_FILE, "ab") as out:
            out.write(f"=== attempt {job.attempts + 1}, {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=job.path, env=env, start_new_session=True)
        self._procs[job.id] = proc
        job.status, job.pid, job.started, job.ended, job.attempts = "running", proc.pid, time.time(), None, job.attempts + 1
        job.returncode, job.error = None, ""
        job.save()
        log.info("started job %s (pid %d)", job.id, proc.pid)

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.poll()
            except Exception:  # the thread must outlive a bad poll
                log.exception("job poll failed")

    def close(self) -> None:
        """Stop the polling thread; running workers go on (a later manager adopts them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ------------------------------------------------------------------------------- the worker process
def run_worker(config: str, attempt: int) -> int:
    """``python -m rge_demo train --config <config>`` in this process, then the exit record.

    The record (``exit.json`` beside the config, written atomically) is how a manager that did not
    start this process (after an app restart) learns the exit code.
    """
    code: int | None = 1
    argv = sys.argv
    try:
        sys.argv = ["rge_demo", "train", "--config", config]
        runpy.run_module("rge_demo", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        with contextlib.suppress(OSError):
            atomic_write_text(Path(config).resolve().parent / EXIT_FILE,
                              json.dumps({"code": code, "attempt": attempt, "pid": os.getpid(), "time": time.time()}) + "\n")
    return code


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=run_worker.__doc__)
    parser.add_argument("--config", required=True, help="the job's config.json")
    parser.add_argument("--attempt", type=int, default=0, help="the job's attempt number (for the exit record)")
    args = parser.parse_args(argv)
    return run_worker(args.config, args.attempt)


if __name__ == "__main__":
    sys.exit(main())
