"""The Train tab's service: upload -> versioned dataset -> drafts -> background job -> result, per session.

Every method takes the browser's session key first (a plain string; see :mod:`rge_demo.app.sessions`)
and works on that session's things only: its uploads and dataset versions (:mod:`.datasets`), its
jobs (:mod:`.jobs`) and the models it added (:mod:`.registry`). Everything lives under one folder
(``settings.cache_dir / "jobs"`` by default)::

    jobs_root/uploads/<upload id>/...   an upload and its dataset versions (data/v<N>.jsonl)
    jobs_root/<job id>/                 one training job (see rge_demo.training.worker)
    jobs_root/models.json               the models sessions added or fine-tuned, with their owners

Jobs start from a local checkpoint folder (a registry name is resolved through the
:class:`ModelManager`); the finished model is registered as ``job-<id>`` for its owner, so every
tab of that session can load it, after an app restart too. No gradio here: the UI wires these
methods and tests call them directly.

Files expire (:meth:`Workbench.sweep`, at start and then from the job queue's polling thread every
:data:`SWEEP_EVERY` seconds at most): after ``settings.retention_hours`` an upload never built into a
dataset is deleted, a built one loses its uploaded files but keeps its dataset versions, and an
ended job loses the checkpoints nothing can resume from (see :mod:`.datasets` and :mod:`.jobs` for
exactly what). Models, metrics, logs and the datasets jobs trained on are kept. A refused upload
leaves nothing at all; a file over ``settings.max_upload_mb`` is refused before it is copied.
"""

from __future__ import annotations

import html
import logging
import math
import os
from pathlib import Path

import pandas as pd

from rge_demo.data.upload import ValidationReport
from rge_demo.errors import RGEUserError
from rge_demo.models.loading import ModelError, check_checkpoint, looks_like_hub_id
from rge_demo.training import drafting
from rge_demo.training.config import TrainConfig
from rge_demo.training.data import DataError, by_task, check_pools, load_pairs, split_pairs
from rge_demo.training.worker import DONE, Job

from .datasets import SAMPLE_UPLOAD, DatasetStore, DatasetVersion
from .jobs import JobQueue
from .registry import ModelAccess, names_a_folder
from .sessions import browser_secret, owner_id, session_key

log = logging.getLogger(__name__)

LAUNCH_STAGES = ("cold-start", "rge", "baseline", "eg-rl")  # leakage is an ablation, not a product choice
MAX_STEPS = 100_000
MAX_BATCH = 1024
MAX_NEW_TOKENS = 512
PROBLEM_COLUMNS = ["line", "field", "problem"]
COUNT_COLUMNS = ["task", "valid pairs"]
DRAFT_COLUMNS = ["row", "task", "query_text", "target", "rationale"]
SWEEP_EVERY = 600.0  # seconds between two retention sweeps at most (sooner with a retention under 40 min)


class WorkbenchError(RGEUserError, ValueError):
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
    """Plotly lines of loss, lm_loss and contrastive_loss (eg-rl: the Embedder's reward, its retrieval
    part and the KL to the reference) against step (a phase change is a dotted line)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if metrics is not None and len(metrics):
        # The total goes last, dashed, so it is drawn over the part it mostly is (QA: hidden under the
        # contrastive loss when a_lm is small); the legend still lists it first.
        for col, colour in (("lm_loss", "#2563eb"), ("contrastive_loss", "#dc2626"), ("direct_loss", "#16a34a"),
                            ("reward", "#9333ea"), ("retrieval_reward", "#c084fc"), ("kl", "#f59e0b"),
                            ("loss", "#111827")):
            if col in metrics and metrics[col].fillna(0).abs().sum() > 0:  # (an unused loss stays 0: hidden)
                total = col == "loss"
                fig.add_scatter(x=metrics["step"], y=metrics[col], mode="lines" if total else "lines+markers",
                                name=col, line={"color": colour, "dash": "dash" if total else "solid",
                                                "width": 2.5 if total else 1.5},
                                marker={"size": 4}, legendrank=1 if total else 1000)
        if "phase" in metrics:
            phases = metrics["phase"].tolist()
            for i in range(1, len(phases)):
                if phases[i] != phases[i - 1]:
                    fig.add_vline(x=float(metrics["step"].iloc[i]) - 0.5, line_dash="dot",
                                  annotation_text=str(phases[i]), line_color="#6b7280")
    steps = metrics["step"] if metrics is not None and len(metrics) else None
    if steps is None:  # no axes running below zero around nothing (QA): a sentence instead
        fig.add_annotation(text="no steps recorded yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    elif steps.max() <= 10:
        fig.update_xaxes(dtick=1)  # a short run's steps are whole numbers (QA: ticks at 1.5, 2.5)
    # a job's name is the user's text: plotly would read <b> and <a href> in a title as markup
    fig.update_layout(title=html.escape(title) or None, xaxis_title="step", yaxis_title="loss", height=320,
                      margin={"l": 40, "r": 10, "t": 70 if title else 40, "b": 40},  # the legend sits above
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"})
    return fig


class Workbench:
    """Uploads, dataset versions, drafts, training jobs and added models of the Train tab, per session.

    ``manager`` is the app's :class:`~rge_demo.models.manager.ModelManager`: it resolves base models
    and receives the trained ones. ``background=False`` starts no polling thread (tests);
    ``max_running`` jobs run at once (0: none starts, they stay queued). ``retention_hours`` and
    ``max_upload_mb`` default to the manager's settings (``RGE_RETENTION_HOURS``, ``RGE_MAX_UPLOAD_MB``).
    """

    def __init__(self, jobs_root: str | os.PathLike | None, manager, *, background: bool = True,
                 max_running: int = 1, retention_hours: float | None = None, max_upload_mb: float | None = None):
        self.manager = manager
        settings = getattr(manager, "settings", None)
        self.root = Path(jobs_root if jobs_root is not None else settings.cache_dir / "jobs").resolve()
        if retention_hours is None:
            retention_hours = getattr(settings, "retention_hours", 24.0)
        if max_upload_mb is None:
            max_upload_mb = getattr(settings, "max_upload_mb", None)
        self.retention_s = float(retention_hours) * 3600.0
        self.store = DatasetStore(self.root, max_upload_bytes=int(max_upload_mb * 2**20) if max_upload_mb else None)
        self.queue = JobQueue(self.root, background=background, max_running=max_running)
        self.models = ModelAccess(self.root, manager)
        try:
            self.sweep()  # what expired while the app was down
        except Exception:  # the app starts anyway; the next sweep tries again
            log.exception("retention sweep at start failed")
        self.queue.housekeeping(self.sweep, min(SWEEP_EVERY, max(1.0, self.retention_s / 4)))

    def close(self) -> None:
        self.queue.close()

    def sweep(self, now: float | None = None) -> dict[str, list[str]]:
        """Delete what is older than the retention time: ``{"uploads": [...], "jobs": [...]}`` as deleted
        (upload ids, ``<upload>/upload`` and ``<job>/checkpoints/<name>``). Never the dataset of a job."""
        try:
            in_use = self.queue.datasets_in_use(self.store.root)
        except Exception:  # unsure which datasets jobs use: delete no upload this time
            log.exception("retention: could not list the jobs' datasets; no upload is deleted this time")
            return {"uploads": [], "jobs": self.queue.sweep(self.retention_s, now)}
        return {"uploads": self.store.sweep(self.retention_s, keep=in_use, now=now),
                "jobs": self.queue.sweep(self.retention_s, now)}

    @property
    def browser_secret(self) -> str:
        """The secret that encrypts session keys in browsers (kept in the jobs folder across restarts)."""
        return browser_secret(self.root)

    # -- uploads ---------------------------------------------------------------------------------
    def new_upload(self, key: str, manifest_file: str | os.PathLike | None = None,
                   archive_file: str | os.PathLike | None = None) -> tuple[Path, ValidationReport]:
        """Unpack an upload into a fresh folder of this session and validate it: ``(folder, report)``."""
        return self.store.new_upload(owner_id(key), manifest_file, archive_file)

    def sample_upload(self, key: str) -> tuple[Path, ValidationReport]:
        """The shipped example upload (40 pairs from the synthetic world), as a fresh upload of this session."""
        return self.store.sample_upload(owner_id(key))

    def report(self, key: str, upload: str) -> ValidationReport:
        """Validate one of this session's uploads again."""
        return self.store.report(owner_id(key), upload)

    @staticmethod
    def report_tables(report: ValidationReport) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The problems (line, field, problem) and the counts per task of a report."""
        counts = pd.DataFrame(sorted(report.task_counts.items()), columns=COUNT_COLUMNS)
        return report.to_dataframe().reindex(columns=PROBLEM_COLUMNS), counts

    def restore(self, key: str) -> dict:
        """What the tab showed this session before a page reload: its last upload and report, its
        dataset versions and jobs. Keys: upload, summary, ok, problems, counts, datasets, dataset, jobs, job."""
        owner = owner_id(key)
        uploads = self.store.uploads(owner)
        out = {"upload": None, "summary": "", "ok": False, "problems": pd.DataFrame(columns=PROBLEM_COLUMNS),
               "counts": pd.DataFrame(columns=COUNT_COLUMNS)}
        if uploads:
            saved = self.store.saved_report(owner, uploads[0])
            out.update(upload=uploads[0], summary=saved["summary"], ok=saved["ok"],
                       problems=pd.DataFrame([vars(p) for p in saved["problems"]], columns=PROBLEM_COLUMNS),
                       counts=pd.DataFrame(sorted(saved["task_counts"].items()), columns=COUNT_COLUMNS))
        datasets = self.dataset_choices(key)
        jobs = self.queue.jobs(owner)
        # the job to show: the one running, else the newest (QA: a reload showed the last queued one)
        shown = next((j for j in jobs if j.status in ("running", "cancelling")), jobs[-1] if jobs else None)
        out.update(datasets=datasets, dataset=datasets[0][1] if datasets else None,
                   jobs=self.jobs_table(key), job=shown.id if shown else None)
        return out

    # -- datasets --------------------------------------------------------------------------------
    def build(self, key: str, upload: str, report: ValidationReport | None = None,
              skip_bad: bool = False) -> DatasetVersion:
        """A new dataset version from the upload's valid rows, with every rationale saved before."""
        return self.store.build(owner_id(key), upload, report, skip_bad=bool(skip_bad))

    def dataset(self, key: str, dataset: str) -> DatasetVersion:
        return self.store.version(owner_id(key), dataset)

    def datasets(self, key: str) -> list[str]:
        """This session's dataset ids (``<upload>/v<N>``), newest upload first, newest version first."""
        return [v.id for v in self.store.versions(owner_id(key))]

    def dataset_choices(self, key: str) -> list[tuple[str, str]]:
        """``(label, dataset id)`` for a picker."""
        return [(v.label, v.id) for v in self.store.versions(owner_id(key))]

    def dataset_summary(self, key: str, dataset: str) -> str:
        return self.store.summary(self.dataset(key, dataset))

    # -- rationales ------------------------------------------------------------------------------
    def drafts(self, key: str, dataset: str, encoder=None, max_new_tokens: int = 64) -> pd.DataFrame:
        """The rows without a rationale and a draft for each: by ``encoder``'s model, else templates."""
        version = self.dataset(key, dataset)
        rows = [r for r in version.rows() if not r.get("rationale")]
        if not rows:
            return drafting.drafts_table([], [])
        if encoder is None:
            texts = [drafting.template_rationale(r) for r in rows]
        else:
            texts = drafting.draft_rationales(encoder, rows, max_new_tokens=max_new_tokens, root=version.path.parent)
        return drafting.drafts_table(rows, texts)

    def save_drafts(self, key: str, dataset: str, table: pd.DataFrame) -> DatasetVersion:
        """A new dataset version with an (edited) drafts table's rationales (``row``, ``rationale``)."""
        if table is None or not isinstance(table, pd.DataFrame) or not len(table):
            raise WorkbenchError("no drafts to save: draft the missing rationales first")
        missing = {"row", "rationale"} - set(table.columns)
        if missing:
            raise WorkbenchError(f"the drafts table lacks the column(s) {sorted(missing)}")
        try:
            rows = pd.to_numeric(table["row"], errors="raise")
        except (ValueError, TypeError):
            raise WorkbenchError("the drafts table's row column must hold row numbers") from None
        if (rows != rows.round()).any():
            raise WorkbenchError("the drafts table's row column must hold whole row numbers")
        drafts = dict(zip(rows.astype(int), table["rationale"].fillna("").astype(str)))
        return self.store.save_rationales(owner_id(key), dataset, drafts)

    @staticmethod
    def answerless(table: pd.DataFrame) -> list[int]:
        """Rows of a drafts table whose rationale does not end in ``answer <target>`` (the form the
        ``<emb>`` after it learns to read; the table's header asks for it)."""
        if table is None or not len(table) or not {"row", "target", "rationale"} <= set(table.columns):
            return []
        return [int(r.row) for r in table.itertuples()
                if str(r.rationale or "").strip() and not drafting.states_answer(str(r.rationale), str(r.target))]

    # -- models ----------------------------------------------------------------------------------
    def model_names(self, key: str) -> list[str]:
        """The models this session sees: the shared ones and those it added or fine-tuned."""
        return self.models.names(owner_id(key))

    def model_catalog(self, key: str) -> list[dict]:
        return self.models.catalog(owner_id(key))

    def shared_model_names(self) -> list[str]:
        """The models every session sees (before any session key is known)."""
        return [s.name for s in self.manager.specs() if self.models.visible("", s.name)]

    def visible_catalog(self, browser_key, connection: str | None = None) -> list[dict]:
        """The catalog rows of a request's session; the shared rows alone when it has no usable key."""
        try:
            return self.model_catalog(session_key(browser_key, connection))
        except RGEUserError:
            return [row for row in self.manager.catalog() if self.models.visible("", row["name"])]

    def check_model(self, key: str, name: str) -> None:
        """Refuse a model another session added or fine-tuned."""
        self.models.check(owner_id(key), str(name or ""))

    def check_unload(self, key: str, name: str) -> None:
        """Refuse to unload a loaded model that other sessions may be using (one model object serves every
        session); a model this session alone added or fine-tuned is its to unload."""
        name = self._model_name(name)
        if name and not self.models.sole_owner(owner_id(key), name) and any(m.name == name
                                                                           for m in self.manager.loaded()):
            raise WorkbenchError(f"{name} is shared with other sessions: unloading it would unload it for them "
                                 "too (the app unloads the least recently used model itself when memory runs short)")

    def load_settings(self, key: str, name: str, dtype: str = "auto",
                      quantization: str | None = None) -> tuple[str, str | None]:
        """The (dtype, quantization) to load ``name`` with for this session. A loaded model other sessions may
        use is not reloaded under them: "auto" without quantization takes it as it is loaded, other settings
        are refused, naming the ones it has. A model this session alone added is loaded as asked; so is one
        nobody has loaded yet (its first loader chooses)."""
        name = self._model_name(name)
        if not name or self.models.sole_owner(owner_id(key), name):
            return dtype, quantization
        current = self.manager.loaded_otherwise(name, dtype, quantization)
        if current is None:
            return dtype, quantization
        if dtype == "auto" and quantization is None:
            return current.dtype, current.quantization  # as it is loaded
        as_loaded = f"{current.dtype}, {current.quantization or 'no quantization'}"
        raise WorkbenchError(f"{name} is shared with other sessions and loaded as {as_loaded}: loading it as "
                             f"{dtype}, {quantization or 'no quantization'} would change it for them too; choose "
                             f"dtype auto and no quantization to use it as it is ({as_loaded}), or load your own "
                             "copy from a folder where the operator allows it (RGE_MODEL_ROOTS)")

    def _model_name(self, name: str) -> str | None:
        """The registry name of a model name or folder; None when it names no model (loading says why)."""
        try:
            return self.manager.resolve(name).name
        except ModelError:
            return None

    def resolve_model(self, key: str, name_or_path: str):
        """The spec of a model this session may use; a new folder or hub id joins this session's list only."""
        text = str(name_or_path or "").strip()
        if not text:
            raise WorkbenchError("choose a model")
        return self.models.resolve(owner_id(key), text)

    def use_model(self, key: str, name_or_path: str, use):
        """``use(spec)`` for a model this session may use (:meth:`resolve_model`); a folder or hub id named
        for the first time joins the session's list only if ``use`` succeeds (loading it, typically)."""
        known = set(self.model_names(key))
        spec = self.resolve_model(key, name_or_path)
        try:
            return use(spec)
        except BaseException:
            if spec.name not in known:
                self.models.forget(owner_id(key), spec.name)
            raise

    def base_models(self, key: str) -> list[str]:
        """Model names this session can start a job from (local checkpoints that are here)."""
        return [s.name for s in self.models.specs(owner_id(key)) if s.kind != "hub" and s.available]

    def init_folder(self, key: str, base_model: str) -> str:
        """The local checkpoint folder of a model name or folder; hub ids are refused (offline)."""
        text = str(base_model or "").strip()
        if not text:
            raise WorkbenchError("choose a base model to start from")
        names = set(self.model_names(key))
        hub_error = WorkbenchError(f"base model {text!r} is a hub id: training starts from a local checkpoint "
                                   "folder (no downloads here); download it first and give its folder")
        if text in names or text in {s.name for s in self.manager.specs()} or names_a_folder(text):
            spec = self.resolve_model(key, text)  # another session's model: OwnershipError
        elif looks_like_hub_id(text):
            raise hub_error
        else:
            raise WorkbenchError(f"base model {text!r}: not a registered model ({', '.join(sorted(names))}) "
                                 "and not a local folder")
        if spec.kind == "hub":
            raise hub_error
        if not spec.available:
            raise WorkbenchError(f"base model {spec.name!r} is {spec.availability}")
        check_checkpoint(spec.source)  # a broken folder is refused now, not by the worker minutes later
        return spec.source

    # -- training --------------------------------------------------------------------------------
    def launch(self, key: str, dataset: str, base_model: str, stage: str = "rge", steps: int = 20,
               batch_size: int = 8, lr: float = 1e-4, a_lm: float = 0.1, a_con: float = 1.0,
               temperature: float = 0.03, lora: bool = False, max_new_tokens: int = 32, val_share: float = 0.2,
               name: str = "", *, cold_start_steps: int = 0) -> Job:
        """Validate every field, write the job's TrainConfig (threads=1) on one dataset version and queue it."""
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
            raise WorkbenchError(f"the job name is {len(name)} characters; keep it to 80 at most")

        version = self.dataset(key, dataset)  # this session's version, or an error
        try:  # checked as an upload is: control tokens included (a version built before uploads were checked)
            pairs = load_pairs(version.path, where=lambda n: f"dataset {version.id}, row {n - 1}")
        except DataError as e:
            raise WorkbenchError(f"{e}; fix the upload, validate it and build again") from None
        n_val = int(round(len(pairs) * val_share))
        if len(pairs) - n_val < 1:
            raise WorkbenchError(f"validation share {val_share:g} leaves no training pair out of {len(pairs)}")
        if stage in ("cold-start", "rge"):
            missing = sum(not p.rationale for p in pairs)
            if missing:
                raise WorkbenchError(f"{missing} of {len(pairs)} pairs of {version.id} have no rationale; stage "
                                     f"{stage!r} needs one on every pair: draft and save them, or choose the "
                                     "baseline stage")
        init = self.init_folder(key, base_model)

        total = steps + (cold_start_steps if stage == "rge" else 0)
        cfg = TrainConfig(stage=stage, init=init, data=str(version.path), steps=steps,
                          cold_start_steps=cold_start_steps if stage == "rge" else 0,
                          batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_steps=min(50, total // 10),
                          a_lm=a_lm, a_con=a_con, temperature=temperature, lora=lora,
                          max_new_tokens=max_new_tokens, val_share=val_share, probe_every=0,
                          save_every=max(10, total // 5), threads=1)
        try:  # what the trainer checks first, said now rather than as a failed job (one target: nothing to contrast)
            check_pools(by_task(split_pairs(pairs, cfg.val_share, cfg.seed)[0]), cfg.stage, cfg.one_task_per_batch,
                        f"dataset {version.id}")
        except DataError as e:
            raise WorkbenchError(str(e)) from None
        # An unnamed job is named for what tells it apart: a second click with the same settings is refused
        # as the same job, another learning rate or dataset is another job (QA: it was refused too).
        default = f"{stage} {Path(init).name} {total} steps, lr {lr:g}, on {version.id}"
        job = self.queue.submit(owner_id(key), cfg, name or default, dataset=version.id)
        log.info("launched job %s: %s from %s on %s, %d steps", job.id, stage, base_model, version.id, total)
        return job

    # -- watching --------------------------------------------------------------------------------
    def progress(self, key: str, job_id: str) -> dict:
        """Poll the queue (reap / start jobs), then this session's job's progress (see JobQueue.progress)."""
        owner = owner_id(key)
        self.queue.job(owner, job_id)  # refuse before doing any work
        self.queue.poll()
        return self.queue.progress(owner, job_id)

    @staticmethod
    def samples_table(p: dict | None) -> pd.DataFrame:
        """A progress dict's last generated rationales (step, rationale); an empty one reads "(empty)"."""
        rows = [{"step": s["step"], "rationale": s["rationale"] or "(empty)"} for s in (p or {}).get("samples", [])]
        return pd.DataFrame(rows, columns=["step", "rationale"])

    @staticmethod
    def status_line(p: dict) -> str:
        """One line for a progress dict: status, step / total, elapsed and ETA."""
        attempt = f" in attempt {p['attempt']}" if p.get("attempt", 1) > 1 else ""  # a resume restarts the clock
        parts = [f"**{p['status']}**", f"step {p['step']} / {p['total_steps']}",
                 f"elapsed {p['elapsed_seconds']:.0f} s{attempt}"]
        if p.get("eta_seconds") is not None:
            parts.append(f"ETA {p['eta_seconds']:.0f} s")
        if len(p["metrics"]) and p["metrics"]["loss"].notna().any():
            parts.append(f"loss {p['metrics']['loss'].dropna().iloc[-1]:.4f}")
        if p.get("dataset"):
            parts.append(f"on {p['dataset']}")
        line = " · ".join(parts)
        if p.get("error"):
            line += f"\n\n{p['error'].splitlines()[0]}"  # progress() has shortened the server's paths
        return line

    def cancel(self, key: str, job_id: str) -> Job:
        if not job_id:
            raise WorkbenchError("choose a job to cancel")
        return self.queue.cancel(owner_id(key), job_id)

    def resume(self, key: str, job_id: str) -> Job:
        if not job_id:
            raise WorkbenchError("choose a job to resume")
        return self.queue.resume(owner_id(key), job_id)

    def jobs_table(self, key: str) -> pd.DataFrame:
        """This session's jobs, newest first: id, name, dataset, status, attempts, checkpoint, error."""
        self.queue.poll()
        return self.queue.jobs_table(owner_id(key))

    def job_ids(self, key: str) -> list[str]:
        """This session's job ids, newest first (as the table lists them)."""
        return [j.id for j in reversed(self.queue.jobs(owner_id(key)))]

    # -- results ---------------------------------------------------------------------------------
    def results(self, key: str, job_id: str, max_queries: int = 64, encoder_factory=None) -> pd.DataFrame:
        """Before/after P@1 on the job's validation share, both modes (computed once, then read from disk)."""
        return self.queue.results(owner_id(key), job_id, max_queries=max_queries, encoder_factory=encoder_factory)

    def register_result(self, key: str, job_id: str) -> str:
        """Put a finished job's model in this session's model list as ``job-<id>``; returns the name."""
        job = self.queue.finished(owner_id(key), job_id)
        spec = self.models.add_trained(owner_id(key), job.model_dir, name=f"job-{job.id}",
                                       description=f"fine-tuned in the Train tab ({job.name})", job=job.id)
        return spec.name


__all__ = ["DONE", "LAUNCH_STAGES", "SAMPLE_UPLOAD", "Workbench", "WorkbenchError", "loss_figure"]
