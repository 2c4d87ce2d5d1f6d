"""The Train tab's work, as plain methods: upload -> validated dataset -> drafts -> background job -> result.

A :class:`Workbench` keeps uploads and jobs under one folder (``settings.cache_dir / "jobs"`` by
default)::

    jobs_root/uploads/<upload id>/upload/...        what was uploaded (zip extracted safely)
    jobs_root/uploads/<upload id>/data/pairs.jsonl  the validated dataset (+ data/images/)
    jobs_root/<job id>/                             one training job (see rge_demo.training.worker)

Every upload gets a fresh folder (never overwritten). Jobs start from a local checkpoint folder
(a registry name is resolved through the :class:`ModelManager`); the finished model is registered
with the manager as ``job-<id>`` so every tab can load it. No gradio here: the UI wires these
methods and tests call them directly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import pandas as pd

from rge_demo.config import ASSETS_DIR
from rge_demo.data.upload import UploadError, ValidationReport, build_dataset, unpack_upload, validate
from rge_demo.models.loading import looks_like_hub_id

from . import drafting
from .config import TrainConfig
from .data import load_pairs
from .worker import ACTIVE, DONE, Job, JobError, JobManager, before_after

log = logging.getLogger(__name__)

SAMPLE_UPLOAD = ASSETS_DIR / "sample_upload" / "sample_upload.zip"
UPLOADS = "uploads"
UPLOAD_INFO = "upload.json"
RESULTS_FILE = "before_after.csv"
LAUNCH_STAGES = ("cold-start", "rge", "baseline")  # leakage is an ablation, not a product choice
MAX_STEPS = 100_000
MAX_BATCH = 1024
MAX_NEW_TOKENS = 512
PROBLEM_COLUMNS = ["line", "field", "problem"]


class WorkbenchError(ValueError):
    """A Train tab request that cannot be done; the message says what to change."""


def _int(name: str, value, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi] (a float like 4.0 from a number box counts), else a clear error."""
    if isinstance(value, bool) or value is None:
        raise WorkbenchError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WorkbenchError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or not lo <= number <= hi:
        raise WorkbenchError(f"{name} must be a whole number in {lo}..{hi}, got {value!r}")
    return int(number)


def _float(name: str, value, lo: float, hi: float, *, open_lo: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] ((lo, hi] with ``open_lo``), else a clear error."""
    span = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WorkbenchError(f"{name} must be a number in {span}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or not (lo < number if open_lo else lo <= number) \
            or number > hi:
        raise WorkbenchError(f"{name} must be a number in {span}, got {value!r}")
    return number


def loss_figure(metrics: pd.DataFrame, title: str = ""):
    """Plotly lines of loss, lm_loss and contrastive_loss against step (a phase change is a dotted line)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if metrics is not None and len(metrics):
        for col, colour in (("loss", "#111827"), ("lm_loss", "#2563eb"), ("contrastive_loss", "#dc2626"),
                            ("direct_loss", "#16a34a")):
            if col in metrics and metrics[col].fillna(0).abs().sum() > 0:  # (an unused loss stays 0: hidden)
                fig.add_scatter(x=metrics["step"], y=metrics[col], mode="lines+markers", name=col,
                                line={"color": colour}, marker={"size": 4})
        if "phase" in metrics:
            phases = metrics["phase"].tolist()
            for i in range(1, len(phases)):
                if phases[i] != phases[i - 1]:
                    fig.add_vline(x=float(metrics["step"].iloc[i]) - 0.5, line_dash="dot",
                                  annotation_text=str(phases[i]), line_color="#6b7280")
    fig.update_layout(title=title or None, xaxis_title="step", yaxis_title="loss", height=320,
                      margin={"l": 40, "r": 10, "t": 40 if title else 10, "b": 40},
                      legend={"orientation": "h", "y": 1.12})
    return fig


class Workbench:
    """Uploads, datasets, drafts and training jobs of the Train tab, all under ``jobs_root``.

    ``manager`` is the app's :class:`~rge_demo.models.manager.ModelManager`: it resolves base models
    and receives the trained ones. ``background=False`` starts no polling thread (tests).
    """

    def __init__(self, jobs_root: str | os.PathLike | None, manager, *, background: bool = True,
                 max_running: int = 1):
        self.manager = manager
        self.root = Path(jobs_root if jobs_root is not None else manager.settings.cache_dir / "jobs").resolve()
        self.uploads_root = self.root / UPLOADS
        self.uploads_root.mkdir(parents=True, exist_ok=True)
        self.jobs = JobManager(self.root, background=background, max_running=max_running)

    def close(self) -> None:
        self.jobs.close()

    # -- uploads ---------------------------------------------------------------------------------
    def _new_upload_dir(self) -> Path:
        while True:
            folder = self.uploads_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            try:
                folder.mkdir()
                return folder
            except FileExistsError:  # the same second and the same 6 hex digits: draw again
                continue

    def upload_dir(self, upload: str | os.PathLike) -> Path:
        """The folder of an upload id (or of a folder path) under ``jobs_root/uploads``; else an error."""
        text = str(upload or "").strip()
        if not text:
            raise WorkbenchError("no upload yet: upload a manifest and/or a zip, or try the sample upload")
        folder = Path(text) if os.sep in text else self.uploads_root / text
        folder = folder.resolve()
        if folder.parent != self.uploads_root or not (folder / UPLOAD_INFO).is_file():
            raise WorkbenchError(f"no upload {text!r} under {self.uploads_root}")
        return folder

    def new_upload(self, manifest_file: str | os.PathLike | None = None,
                   archive_file: str | os.PathLike | None = None) -> tuple[Path, ValidationReport]:
        """Unpack an upload into a fresh folder and validate it: ``(upload folder, report)``."""
        if not manifest_file and not archive_file:
            raise UploadError("nothing uploaded: give a manifest (.jsonl/.csv) and/or a zip of images")
        if archive_file and Path(archive_file).suffix.lower() != ".zip":
            raise UploadError(f"{Path(archive_file).name}: the archive must be a .zip file")
        folder = self._new_upload_dir()
        try:
            manifest, image_root = unpack_upload(folder, manifest_file or None, archive_file or None)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a refused upload leaves nothing behind
            raise
        info = {"manifest": str(manifest), "image_root": str(image_root),
                "sources": [Path(p).name for p in (manifest_file, archive_file) if p], "created": time.time()}
        (folder / UPLOAD_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        report = validate(manifest, image_root)
        log.info("upload %s: %s", folder.name, report.summary())
        return folder, report

    def sample_upload(self) -> tuple[Path, ValidationReport]:
        """The shipped example upload (40 pairs from the synthetic world), as a fresh upload."""
        if not SAMPLE_UPLOAD.is_file():
            raise UploadError(f"the sample upload is missing ({SAMPLE_UPLOAD}); "
                              "make it with rge_demo.data.upload.make_sample_upload")
        return self.new_upload(archive_file=SAMPLE_UPLOAD)

    def report(self, upload: str | os.PathLike) -> ValidationReport:
        """Validate an upload again (e.g. for an API call that only knows the upload id)."""
        info = json.loads((self.upload_dir(upload) / UPLOAD_INFO).read_text(encoding="utf-8"))
        return validate(info["manifest"], info["image_root"])

    @staticmethod
    def report_tables(report: ValidationReport) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The problems (line, field, problem) and the counts per task of a report."""
        counts = pd.DataFrame(sorted(report.task_counts.items()), columns=["task", "valid pairs"])
        return report.to_dataframe().reindex(columns=PROBLEM_COLUMNS), counts

    def build(self, upload: str | os.PathLike, report: ValidationReport | None = None,
              skip_bad: bool = False) -> Path:
        """Write the upload's valid rows as ``<upload>/data/pairs.jsonl``; returns its path."""
        folder = self.upload_dir(upload)
        return build_dataset(report if report is not None else self.report(folder), folder, skip_bad=bool(skip_bad))

    def pairs_path(self, upload: str | os.PathLike) -> Path:
        path = self.upload_dir(upload) / drafting.PAIRS
        if not path.is_file():
            raise WorkbenchError(f"upload {Path(str(upload)).name} has no dataset yet: press Build dataset first")
        return path

    def datasets(self) -> list[str]:
        """Upload ids with a built dataset, newest first."""
        return sorted((p.name for p in self.uploads_root.iterdir() if (p / drafting.PAIRS).is_file()), reverse=True)

    def dataset_summary(self, upload: str | os.PathLike) -> str:
        rows = drafting.load_rows(self.upload_dir(upload), missing_only=False)
        missing = sum(not r.get("rationale") for r in rows)
        tasks = pd.Series([r.get("task", "") for r in rows]).value_counts().sort_index()
        per_task = ", ".join(f"{t} {n}" for t, n in tasks.items())
        return (f"{len(rows)} pair(s) ({per_task}); {missing} without a rationale"
                + (" (draft them, or train the baseline stage)" if missing else ""))

    # -- rationales ------------------------------------------------------------------------------
    def drafts(self, upload: str | os.PathLike, encoder=None, max_new_tokens: int = 64) -> pd.DataFrame:
        """A table of the rows without a rationale and a draft for each: by ``encoder``'s model, else templates."""
        folder = self.upload_dir(upload)
        self.pairs_path(folder)
        rows = drafting.load_rows(folder)
        if not rows:
            return drafting.drafts_table([], [])
        if encoder is None:
            texts = [drafting.template_rationale(r) for r in rows]
        else:
            texts = drafting.draft_rationales(encoder, rows, max_new_tokens=max_new_tokens,
                                              root=folder / drafting.PAIRS.parent)
        return drafting.drafts_table(rows, texts)

    def save_drafts(self, upload: str | os.PathLike, table: pd.DataFrame) -> Path:
        """Write an (edited) drafts table into the upload's pairs.jsonl."""
        folder = self.upload_dir(upload)
        self.pairs_path(folder)
        if table is None or not isinstance(table, pd.DataFrame) or not len(table):
            raise WorkbenchError("no drafts to save: draft the missing rationales first")
        missing = {"row", "rationale"} - set(table.columns)
        if missing:
            raise WorkbenchError(f"the drafts table lacks the column(s) {sorted(missing)}")
        try:
            rows = pd.to_numeric(table["row"], errors="raise")
        except (ValueError, TypeError):
            raise WorkbenchError("the drafts table's row column must hold row numbers") from None
        return drafting.save_drafts(folder, table.assign(row=rows))

    # -- training --------------------------------------------------------------------------------
    def base_models(self) -> list[str]:
        """Registry names that can start a job (local checkpoints that are here)."""
        return [s.name for s in self.manager.specs() if s.kind != "hub" and s.available]

    def init_folder(self, base_model: str) -> str:
        """The local checkpoint folder of a registry name or folder; hub ids are refused (offline)."""
        text = str(base_model or "").strip()
        if not text:
            raise WorkbenchError("choose a base model to start from")
        names = {s.name for s in self.manager.specs()}
        hub_error = WorkbenchError(f"base model {text!r} is a hub id: training starts from a local checkpoint "
                                   "folder (no downloads here); download it first and give its folder")
        if text in names or Path(text).expanduser().is_dir():
            spec = self.manager.resolve(text)
        elif looks_like_hub_id(text):
            raise hub_error
        else:
            raise WorkbenchError(f"base model {text!r}: not a registered model ({', '.join(sorted(names))}) "
                                 "and not a local folder")
        if spec.kind == "hub":
            raise hub_error
        if not spec.available:
            raise WorkbenchError(f"base model {spec.name!r} is {spec.availability}")
        return spec.source

    def launch(self, pairs_path: str | os.PathLike, base_model: str, stage: str = "rge", steps: int = 20,
               batch_size: int = 8, lr: float = 1e-4, a_lm: float = 0.1, a_con: float = 1.0,
               temperature: float = 0.03, lora: bool = False, max_new_tokens: int = 32, val_share: float = 0.2,
               name: str = "", *, cold_start_steps: int = 0) -> Job:
        """Validate every field, write the job's TrainConfig (threads=1) and queue it."""
        if stage not in LAUNCH_STAGES:
            raise WorkbenchError(f"stage must be one of {', '.join(LAUNCH_STAGES)}, got {stage!r}")
        steps = _int("steps", steps, 1, MAX_STEPS)
        cold_start_steps = _int("cold start steps", cold_start_steps, 0, MAX_STEPS)
        batch_size = _int("batch size", batch_size, 1 if stage == "cold-start" else 2, MAX_BATCH)
        max_new_tokens = _int("max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
        lr = _float("learning rate", lr, 0.0, 1.0, open_lo=True)
        a_lm = _float("a_lm (LM loss weight)", a_lm, 0.0, 1000.0)
        a_con = _float("a_con (contrastive loss weight)", a_con, 0.0, 1000.0)
        temperature = _float("temperature", temperature, 0.0, 10.0, open_lo=True)
        val_share = _float("validation share", val_share, 0.0, 0.9)
        if stage == "cold-start" and a_lm == 0:
            raise WorkbenchError("a_lm is 0: the cold-start stage trains the LM loss only, nothing would be learned")
        if stage == "baseline" and a_con == 0:
            raise WorkbenchError("a_con is 0: the baseline stage trains the contrastive loss only")
        if stage == "rge" and a_lm == 0 and a_con == 0:
            raise WorkbenchError("a_lm and a_con are both 0: the loss would be zero")
        if not isinstance(lora, bool):
            raise WorkbenchError(f"lora must be true or false, got {lora!r}")
        name = " ".join(str(name or "").split())
        if len(name) > 80:
            raise WorkbenchError(f"the job name is {len(name)} characters; keep it under 80")

        if not pairs_path:
            raise WorkbenchError("no dataset: build one from an upload first")
        pairs_file = Path(pairs_path).resolve()
        if not pairs_file.is_relative_to(self.uploads_root) or not pairs_file.is_file():
            raise WorkbenchError(f"no dataset at {pairs_path}: build one from an upload first")
        pairs = load_pairs(pairs_file)  # DataError names the line
        n_val = int(round(len(pairs) * val_share))
        if len(pairs) - n_val < 1:
            raise WorkbenchError(f"validation share {val_share:g} leaves no training pair out of {len(pairs)}")
        if stage in ("cold-start", "rge"):
            missing = sum(not p.rationale for p in pairs)
            if missing:
                raise WorkbenchError(f"{missing} of {len(pairs)} pairs have no rationale; stage {stage!r} needs one "
                                     "on every pair: draft and save them, or choose the baseline stage")
        init = self.init_folder(base_model)

        total = steps + (cold_start_steps if stage == "rge" else 0)
        cfg = TrainConfig(stage=stage, init=init, data=str(pairs_file), steps=steps,
                          cold_start_steps=cold_start_steps if stage == "rge" else 0,
                          batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_steps=min(50, total // 10),
                          a_lm=a_lm, a_con=a_con, temperature=temperature, lora=lora,
                          max_new_tokens=max_new_tokens, val_share=val_share, probe_every=0,
                          save_every=max(10, total // 5), threads=1)
        job = self.jobs.submit(cfg, name=name or f"{stage} {Path(init).name} {total} steps")
        log.info("launched job %s: %s from %s, %d steps", job.id, stage, base_model, total)
        return job

    # -- watching --------------------------------------------------------------------------------
    def progress(self, job_id: str) -> dict:
        """Poll the queue (reap / start jobs), then the job's progress (see JobManager.progress)."""
        if not job_id:
            raise WorkbenchError("choose a job")
        self.jobs.poll()
        return self.jobs.progress(job_id)

    @staticmethod
    def status_line(p: dict) -> str:
        """One line for a progress dict: status, step / total, elapsed and ETA."""
        parts = [f"**{p['status']}**", f"step {p['step']} / {p['total_steps']}",
                 f"elapsed {p['elapsed_seconds']:.0f} s"]
        if p.get("eta_seconds") is not None:
            parts.append(f"ETA {p['eta_seconds']:.0f} s")
        if len(p["metrics"]) and p["metrics"]["loss"].notna().any():
            parts.append(f"loss {p['metrics']['loss'].dropna().iloc[-1]:.4f}")
        line = " · ".join(parts)
        if p.get("error"):
            line += f"\n\n{p['error'].splitlines()[0]}"
        return line

    def cancel(self, job_id: str) -> Job:
        if not job_id:
            raise WorkbenchError("choose a job to cancel")
        return self.jobs.cancel(job_id)

    def resume(self, job_id: str) -> Job:
        if not job_id:
            raise WorkbenchError("choose a job to resume")
        return self.jobs.resume(job_id)

    def jobs_table(self) -> pd.DataFrame:
        """Every job, oldest first: id, name, status (queued/running/finished/failed/cancelled), attempts, error."""
        self.jobs.poll()
        return self.jobs.jobs_table()

    def job_ids(self) -> list[str]:
        return [j.id for j in self.jobs.jobs()]

    def active(self) -> bool:
        return any(j.status in ACTIVE or j.status == "queued" for j in self.jobs.jobs())

    # -- results ---------------------------------------------------------------------------------
    def results(self, job_id: str, max_queries: int = 64, encoder_factory=None) -> pd.DataFrame:
        """Before/after P@1 on the job's validation share, both modes (computed once, then read from disk)."""
        if not job_id:
            raise WorkbenchError("choose a job")
        job = self.jobs.job(job_id)
        if job.status != "finished":
            raise JobError(f"job {job_id} is {job.status}: results come when it has finished")
        saved = job.path / RESULTS_FILE
        if saved.is_file():
            return pd.read_csv(saved)
        table = before_after(job, encoder_factory=encoder_factory, max_queries=max_queries)
        table["p@1"] = table["p@1"].round(4)
        table.to_csv(saved, index=False)
        return table

    def register_result(self, job_id: str) -> str:
        """Register a finished job's model with the manager as ``job-<id>``; returns the registry name."""
        if not job_id:
            raise WorkbenchError("choose a job")
        job = self.jobs.job(job_id)
        if job.status != "finished" or job.model_dir is None:
            raise JobError(f"job {job_id} is {job.status}: there is no trained model to load yet")
        spec = self.manager.register(job.model_dir, name=f"job-{job.id}",
                                     description=f"fine-tuned in the Train tab ({job.name})")
        return spec.name


__all__ = ["DONE", "LAUNCH_STAGES", "SAMPLE_UPLOAD", "Workbench", "WorkbenchError", "loss_figure"]
