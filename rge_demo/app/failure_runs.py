"""The Failures tab's runs: which runs a session sees, its own gallery evaluations, and links to a case.

Two kinds of saved run pairs (a ``reason/`` and a ``direct/`` run folder each):

* shared runs, read-only for everyone: the shipped ones (``assets/runs``) and those made in the app
  from world tasks or from a sample gallery (``<cache>/runs``), listed by :meth:`Demo.saved_runs`;
* a session's own runs, made from a gallery the session registered: written under
  ``<cache>/user-runs/<owner id>/<run>/``, listed and opened by that session alone (another session
  naming one gets :class:`~rge_demo.errors.OwnershipError`), like the galleries themselves
  (:mod:`rge_demo.app.gallery_access`). They are found again after a restart.

A case is reachable by URL: ``?run=<run>&case=<query id>`` (:func:`case_link`, :func:`parse_case_link`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from rge_demo.config import ASSETS_DIR
from rge_demo.errors import OwnershipError, RGEUserError

from .sessions import owner_id

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 300
SAMPLING_POINTS = ASSETS_DIR / "cost-sampling.json"  # the cost panel's sampled-rationale points
RUN_PARAM, CASE_PARAM = "run", "case"


class RunNotFound(RGEUserError, LookupError):
    """A run name that is neither shared nor one of this session's."""


class CaseNotFound(RGEUserError, LookupError):
    """A case (query id) that is not in the run."""


class LinkError(RGEUserError, ValueError):
    """A page address whose run / case parameters cannot be used."""


# ------------------------------------------------------------------------------------------- links
def case_link(base: str, run: str, case: str | None = None) -> str:
    """The page address that opens ``run`` (and ``case``) in the Failures tab: ``<base>?run=..&case=..``.

    ``base`` is the page's address (its query and fragment are dropped); "" gives a relative link.
    """
    parts = urlsplit(base or "")
    query = f"{RUN_PARAM}={quote(run, safe='')}" + (f"&{CASE_PARAM}={quote(case, safe='')}" if case else "")
    return urlunsplit((parts.scheme, parts.netloc, parts.path or ("/" if parts.netloc else ""), query, ""))


def parse_case_link(params: Mapping[str, str] | None) -> tuple[str | None, str | None]:
    """(run, case) from a page's query parameters; (None, None) when they name no run.

    Raises :class:`LinkError` for a case without a run, or a value that is too long or not text.
    """
    params = params or {}
    run, case = params.get(RUN_PARAM), params.get(CASE_PARAM)
    for name, value in ((RUN_PARAM, run), (CASE_PARAM, case)):
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > MAX_PARAM_CHARS or "\x00" in value:
            raise LinkError(f"the link's {name!r} parameter is not a usable name")
    run, case = (run or "").strip() or None, (case or "").strip() or None
    if case and not run:
        raise LinkError(f"the link names case {case!r} but no run: add {RUN_PARAM}=<run name>")
    return run, case


# -------------------------------------------------------------------------------------------- runs
class FailureRuns:
    """Shared and per-session evaluation runs over a :class:`~rge_demo.app.demo.Demo`."""

    def __init__(self, demo):
        self.demo = demo
        self.root = Path(demo.settings.cache_dir) / "user-runs"
        self._lock = threading.RLock()
        self._cases: dict[str, tuple] = {}  # run -> (stamp, cases)

    # -- listing -------------------------------------------------------------------------------
    def _own_runs(self) -> dict[str, tuple[str, Path]]:
        """Every session's runs: {name: (owner id, folder)}."""
        out = {}
        if self.root.is_dir():
            for folder in sorted(self.root.glob("*/*")):
                if (folder / "reason" / "cases.jsonl").is_file() and (folder / "direct" / "cases.jsonl").is_file():
                    out[folder.name] = (folder.parent.name, folder)
        return out

    def names(self, session_key: str | None) -> list[str]:
        """The shared runs (sorted), then this session's own."""
        owner = owner_id(session_key) if session_key else None
        own = sorted(n for n, (o, _) in self._own_runs().items() if o == owner)
        return sorted(self.demo.saved_runs()) + own

    def is_own(self, run: str) -> bool:
        return run in self._own_runs() and run not in self.demo.saved_runs()

    # -- export --------------------------------------------------------------------------------
    def export(self, run, cases, session_key: str | None = None) -> list[Path]:
        """``cases`` (what the filters keep) of ``run`` as a CSV and a Parquet file, in a new folder
        under ``<cache>/exports``; folders older than the retention time (``RGE_RETENTION_HOURS``)
        are deleted first, so exports do not pile up."""
        from rge_demo.analysis.failures import write_export

        self._own_folder(run, session_key)  # refuses unknown runs and other sessions' runs
        root = Path(self.demo.settings.cache_dir) / "exports"
        root.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - self.demo.settings.retention_hours * 3600
        for old in root.iterdir():
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=root))
        return write_export(cases, folder, f"{run}-{len(cases)}-cases")

    # -- reading -------------------------------------------------------------------------------
    def load(self, run, session_key: str | None = None) -> list:
        """A run's cases (image paths absolute): a shared run for anyone, an own run for its owner."""
        own = self._own_folder(run, session_key)
        return self.demo.load_cases(run) if own is None else self.read(run, own)

    def _own_folder(self, run, session_key: str | None) -> Path | None:
        """None for a shared run; the folder of this session's own run; refuses anything else."""
        if not run:
            raise RunNotFound("choose a saved run first")
        if not isinstance(run, str):
            raise RunNotFound(f"no saved run {run!r}")
        if run in self.demo.saved_runs():
            return None
        entry = self._own_runs().get(run)
        if entry is None:
            raise RunNotFound(f"no saved run {run!r}; available: {', '.join(self.names(session_key)) or 'none'}")
        owner, folder = entry
        if not session_key or owner != owner_id(session_key):
            raise OwnershipError(f"run {run!r} belongs to another session")
        return folder

    def read(self, run: str, folder: Path) -> list:
        """The cases of the run pair in ``folder`` (``reason/``, ``direct/``), image paths made absolute;
        cached until either ``cases.jsonl`` changes."""
        from rge_demo.analysis.failures import load_pair

        reason, direct = folder / "reason", folder / "direct"
        stamp = tuple((d / "cases.jsonl").stat().st_mtime_ns for d in (reason, direct))
        with self._lock:
            if self._cases.get(run, (None,))[0] != stamp:
                cases = load_pair(reason, direct)
                for c in cases:
                    if c.image and not Path(c.image).is_absolute():
                        c.image = str(reason / c.image)
                self._cases[run] = (stamp, cases)
            return self._cases[run][1]

    def case(self, run, case_id, session_key: str | None = None):
        """One case of a run by its query id."""
        cases = self.load(run, session_key)
        if not case_id or not isinstance(case_id, str):
            raise CaseNotFound(f"name a case of run {run!r}")
        for c in cases:
            if c.query_id == case_id:
                return c
        raise CaseNotFound(f"run {run!r} has no case {case_id!r} ({len(cases)} cases)")

    def folder(self, run: str, session_key: str | None = None) -> Path:
        """The folder of a run's reasoning side (its ``summary.json`` says what was evaluated)."""
        own = self._own_folder(run, session_key)  # refuses unknown runs and other sessions' runs
        return self.demo.saved_runs()[run][0] if own is None else own / "reason"

    def info(self, run: str, session_key: str | None = None) -> dict:
        """The reasoning side's ``summary.json`` (model, tasks, gallery, seed, ...), {} when absent."""
        path = self.folder(run, session_key) / "summary.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    # -- cost -------------------------------------------------------------------------------------------
    def cost_points(self, session_key: str | None = None) -> list:
        """One :class:`~rge_demo.analysis.cost.CostPoint` per run this session sees (an Embed-RL run, whose
        model is ``<reasoner>+<embedder>``, is marked as such), plus the shipped sampling points
        (``assets/cost-sampling.json``, written by ``tools/release_embed_rl.py``)."""
        from rge_demo.analysis.cost import CostPoint, run_point

        points = []
        for name in self.names(session_key):
            try:
                cases = self.load(name, session_key)
                model = str(self.info(name, session_key).get("model", ""))
            except (RGEUserError, OSError, ValueError) as e:  # a damaged run is left out, not fatal
                log.warning("cost panel: run %s left out: %s", name, e)
                continue
            if cases:
                points.append(run_point(name, cases, "embed-rl" if "+" in model else "rge"))
        if SAMPLING_POINTS.is_file():
            points += [CostPoint(**d) for d in json.loads(SAMPLING_POINTS.read_text(encoding="utf-8"))]
        return points

    # -- attribution of a case's rationale ---------------------------------------------------------------
    def attribute_case(self, run, case_id, session_key: str | None = None, model_name: str | None = None):
        """Leave-one-sentence-out and leave-one-clause-out contributions of a case's saved rationale
        (:func:`rge_demo.analysis.attribution.attribute`, one batched forward) with the model in use,
        against the case's right answer and its top-1 wrong candidate, among the candidates it was
        ranked against: the world task's, or the evaluated gallery's items."""
        from rge_demo.analysis.attribution import attribute_labelled

        case = self.case(run, case_id, session_key)
        if not case.rationale.strip():
            raise RGEUserError(f"case {case.query_id!r} has an empty rationale: nothing to attribute")
        loaded = self.demo.model(model_name)
        labels, ids, matrix = self._candidates(run, case, loaded, session_key)
        if case.target_id not in ids:
            raise CaseNotFound(f"case {case.query_id!r}: its right answer {case.target_id!r} is not among the "
                               f"candidates it was ranked against")
        inp = self.demo.make_input(case.image, case.text, case.instruction)
        return attribute_labelled(loaded.encoder, inp, case.rationale, matrix, ids.index(case.target_id), labels)

    def _candidates(self, run: str, case, loaded, session_key) -> tuple[list[str], list[str], object]:
        """(labels, ids, unit direct-mode matrix) of what ``case`` was ranked against."""
        from rge_demo.analysis.eval_tasks import EvalCandidate, EvalItem
        from rge_demo.analysis.evaluate import embed_candidates
        from rge_demo.data import world

        info = self.info(run, session_key)
        if info.get("gallery"):
            gallery = self.demo.gallery(info["gallery"], session_key)
            index = self.demo.index(gallery.name, loaded.name, session_key=session_key)
            return ([it.label or it.text or it.id for it in gallery.items], [it.id for it in gallery.items],
                    index.matrix)
        spec = world.TASKS.get(case.task)
        if spec is None:
            raise RunNotFound(f"run {run!r}: its candidates cannot be rebuilt (task {case.task!r} is neither a "
                              f"world task nor from a gallery)")
        cands = [EvalCandidate(it.id, it.label or it.text, EvalItem(spec.candidate_instruction, it.text, img))
                 for it, img in world.candidates(case.task)]
        matrix = embed_candidates(loaded.encoder, cands, 32, self.demo.cache, loaded.fingerprint, lambda _: None)
        return [c.label for c in cands], [c.id for c in cands], matrix

    # -- new evaluations -----------------------------------------------------------------------------
    def evaluate_gallery(self, gallery_name, session_key: str | None, model_name: str | None = None,
                         progress: Callable[[str, int, int], None] | None = None) -> tuple[str, list]:
        """Evaluate the model on a gallery's queries with a right answer, in both modes; save the run pair.

        A sample gallery's run is shared (``<cache>/runs``); a run of the session's own gallery (or made
        with its own model) is the session's alone (``<cache>/user-runs/<owner>``). Returns (run name, cases).
        """
        from rge_demo.analysis.gallery_eval import copy_query_images, gallery_tasks

        demo = self.demo
        gallery = demo.gallery(gallery_name, session_key)  # another session's gallery is refused here
        tasks = gallery_tasks(gallery)
        loaded = demo.model(model_name)
        n = sum(len(t.queries) for t in tasks)

        def finish(run, folder: Path) -> None:
            run.info["gallery"] = gallery.name
            copy_query_images(run, folder)

        name, cases = self.save_evaluation(loaded, tasks, f"{loaded.name}-gallery-{gallery.name}-{n}", session_key,
                                           gallery.name in demo.galleries, progress, finish)
        log.info("gallery %s evaluated with %s: run %s (%d queries)", gallery.name, loaded.name, name, n)
        return name, cases

    def save_evaluation(self, loaded, tasks, name: str, session_key: str | None, shared_data: bool = True,
                        progress: Callable[[str, int, int], None] | None = None,
                        finish: Callable[[object, Path], None] | None = None) -> tuple[str, list]:
        """Evaluate ``loaded`` on ``tasks`` in both modes and save the run pair as a new run ``name`` (then
        ``-2``, ...); ``finish(run, folder)`` runs before each run is saved. The run is shared when its data
        and its model are (a model another session cannot see makes it the session's own). A run that
        fails midway is removed. Returns (run name, cases)."""
        from rge_demo.analysis.evaluate import evaluate

        demo = self.demo
        shared = shared_data and demo.workbench.models.visible("", loaded.name)
        name, out = self.new_folder(name, None if shared else owner_id(session_key))
        try:
            for mode in ("direct", "reason"):
                run = evaluate(loaded.encoder, tasks, mode=mode, cache=demo.cache, fingerprint=loaded.fingerprint,
                               model_name=loaded.name,
                               progress=(lambda d, t, m=mode: progress(m, d, t)) if progress else None)
                if finish is not None:
                    finish(run, out / mode)
                run.save(out / mode)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # no half-written run is listed
            raise
        return name, (demo.load_cases(name) if shared else self.load(name, session_key))

    def new_folder(self, name: str, owner: str | None) -> tuple[str, Path]:
        """A new run's name (``name``, then ``-2``, ...) and its folder, made here: shared (``<cache>/runs``)
        when ``owner`` is None, else that owner's."""
        root = Path(self.demo.settings.cache_dir) / "runs" if owner is None else self.root / owner
        with self._lock:
            return new_run_folder(root, name, set(self.demo.saved_runs()) | set(self._own_runs()))


def new_run_folder(root: Path, name: str, taken: set[str]) -> tuple[str, Path]:
    """A new run's folder under ``root``, made here: ``name`` made safe, then ``-2``, ``-3``, ... while
    it is ``taken`` or already there (another request may make the same name at the same time)."""
    base = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "run"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = base if i == 1 else f"{base}-{i}"
        if candidate in taken:
            continue
        try:
            (root / candidate).mkdir()
        except FileExistsError:
            continue
        return candidate, root / candidate
    raise RGEUserError(f"too many saved runs named {base!r}; delete some from {root.name}/")


__all__ = ["CaseNotFound", "FailureRuns", "LinkError", "RunNotFound", "case_link", "new_run_folder", "parse_case_link"]
