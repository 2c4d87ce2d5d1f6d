"""Which models each session sees: the shared registry plus the models the session itself added.

The :class:`~rge_demo.models.manager.ModelManager` holds one registry for the whole app. Models it
had before any session spoke (shipped micro models, the hub checkpoint, the app's ``--model``)
are shared. A folder or hub id a session names, and a model it fine-tuned, are that session's
only: registered with the manager (so it can be loaded by name) but listed, loaded and trained
from by their owners alone. The list of those private models is kept in
``jobs_root/models.json``, so a fine-tuned model is still there after an app restart.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from rge_demo.data.items import atomic_write_text
from rge_demo.errors import OwnershipError
from rge_demo.models.loading import looks_like_hub_id
from rge_demo.training.worker import STATUS_FILE, Job, JobError

from .sessions import check_server_folder

log = logging.getLogger(__name__)

REGISTRY_FILE = "models.json"


def names_a_folder(text: str) -> bool:
    """Whether a model a request names is a folder: a path (``/``, ``~``, ``.``) or a relative path that
    is not a hub id (``owner/name``). Decided from the text alone: whatever the app's working directory
    holds changes no answer (``./owner/name`` names such a folder)."""
    return text.startswith(("/", "~", ".")) or ("/" in text and not looks_like_hub_id(text))


class ModelAccess:
    """Per-session model lists over one shared :class:`ModelManager`."""

    def __init__(self, jobs_root: str | os.PathLike, manager):
        self.manager = manager
        self.path = Path(jobs_root).resolve() / REGISTRY_FILE
        self._lock = threading.RLock()
        self._private: dict[str, dict] = {}  # name -> {"source", "owners", "description", "job"}
        self._load()

    def _load(self) -> None:
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else []
        except (OSError, ValueError) as e:
            log.error("ignoring %s: unreadable (%s)", self.path, e)
            entries = []
        for entry in entries if isinstance(entries, list) else []:
            try:
                name, source = str(entry["name"]), str(entry["source"])
                owners = [str(o) for o in entry.get("owners", [])]
            except (KeyError, TypeError):
                continue
            hub = not Path(source).is_absolute() and looks_like_hub_id(source)  # folders are kept resolved
            if not hub and not Path(source).is_dir():
                log.warning("model %s: its folder %s is gone; left out", name, source)
                continue
            spec = self.manager.register(source, name=name, description=str(entry.get("description", "")), hub=hub)
            self._private[spec.name] = {"source": spec.source, "owners": owners,
                                        "description": spec.description, "job": entry.get("job", "")}

    def _save(self) -> None:
        entries = [{"name": n, **e} for n, e in sorted(self._private.items())]
        atomic_write_text(self.path, json.dumps(entries, indent=1) + "\n")

    # -- reading -------------------------------------------------------------------------------
    def visible(self, owner: str, name: str) -> bool:
        entry = self._private.get(name)
        return entry is None or owner in entry["owners"]

    def specs(self, owner: str) -> list:
        """The shared models and ``owner``'s own, in registry order."""
        with self._lock:
            return [s for s in self.manager.specs() if self.visible(owner, s.name)]

    def names(self, owner: str) -> list[str]:
        return [s.name for s in self.specs(owner)]

    def catalog(self, owner: str) -> list[dict]:
        """The manager's catalog rows ``owner`` may see."""
        with self._lock:
            return [row for row in self.manager.catalog() if self.visible(owner, row["name"])]

    def sole_owner(self, owner: str, name: str) -> bool:
        """Whether ``name`` is ``owner``'s alone (shared models and those two sessions added are not)."""
        entry = self._private.get(name)
        return entry is not None and entry["owners"] == [owner]

    def check(self, owner: str, name: str) -> None:
        """Refuse a model that another session added."""
        if not self.visible(owner, name):
            raise OwnershipError(f"model {name} belongs to another session")

    # -- adding --------------------------------------------------------------------------------
    def resolve(self, owner: str, name_or_path: str | os.PathLike):
        """The spec of a name ``owner`` sees, or of a folder / hub id, which joins ``owner``'s list only.

        A folder not yet in the registry must lie under the operator's RGE_MODEL_ROOTS (decided from
        the path before the folder is looked at); one inside another session's training job is refused.
        """
        text = str(name_or_path)
        with self._lock:
            known = {s.name: s for s in self.manager.specs()}
            if text in known:
                if known[text].kind == "hub" and not self.visible(owner, text):
                    self._add(owner, known[text])  # a hub id is public: naming it is enough
                self.check(owner, text)
                return known[text]
            if names_a_folder(text):
                path = Path(text).expanduser().resolve()
                spec = next((s for s in known.values() if s.source == str(path)), None)
                entry = self._private.get(spec.name) if spec is not None else None
                if spec is not None and entry is None:
                    return spec  # a shared model named by its folder
                if entry is not None and entry.get("job") and owner not in entry["owners"]:
                    raise OwnershipError(f"model {spec.name} belongs to another session")
                own_job = self._in_job_of(owner, path)  # OwnershipError: another session's job
                operators = path == Path(self.manager.settings.model).expanduser().resolve()  # RGE_MODEL's folder
                # Another session's folder is no exception: it may have been added under wider roots.
                if not (own_job or operators or (entry is not None and owner in entry["owners"])):
                    check_server_folder(text, self.manager.settings.model_roots, "models", "RGE_MODEL_ROOTS",
                                        "load a model from the list")
                spec = self.manager.resolve(text)
            else:  # a hub id, never a folder of the working directory; UnknownModel (a ModelError) otherwise
                spec = self.manager.register(text, hub=True)
            self._add(owner, spec)
            return spec

    def _in_job_of(self, owner: str, path: Path) -> bool:
        """Whether ``path`` lies inside one of ``owner``'s training jobs (its model, a checkpoint). A
        folder inside another session's job is that session's alone, whoever names it by path."""
        jobs = self.path.parent
        try:
            rel = path.resolve().relative_to(jobs)
        except ValueError:
            return False
        if not rel.parts or not (jobs / rel.parts[0] / STATUS_FILE).is_file():
            return False
        try:
            job_owner = Job.load(jobs / rel.parts[0]).owner
        except JobError:
            job_owner = None  # damaged: nobody can tell whose it is
        if job_owner != "" and job_owner != owner:  # "": a job from before sessions had owners, shared
            raise OwnershipError(f"that folder belongs to another session's training job {rel.parts[0]}")
        return True

    def add_trained(self, owner: str, model_dir: str | os.PathLike, name: str, description: str, job: str):
        """Register a fine-tuned model as ``name`` for ``owner`` (kept across app restarts)."""
        with self._lock:
            spec = self.manager.register(model_dir, name=name, description=description)
            self._add(owner, spec, job=job)
            return spec

    def forget(self, owner: str, name: str) -> None:
        """Take a model ``owner`` added (not a trained one) off ``owner``'s list; the last owner gone, off
        the registry too (a name that failed to load must not stay in the list)."""
        with self._lock:
            entry = self._private.get(name)
            if entry is None or entry.get("job") or owner not in entry["owners"]:
                return
            entry["owners"].remove(owner)
            if not entry["owners"] and self.manager.unregister(name):
                del self._private[name]
            self._save()

    def _add(self, owner: str, spec, job: str = "") -> None:
        entry = self._private.setdefault(spec.name, {"source": spec.source, "owners": [],
                                                     "description": spec.description, "job": job})
        if owner not in entry["owners"]:
            entry["owners"].append(owner)
        self._save()
        log.info("model %s is in the list of session %s", spec.name, owner[:8])


__all__ = ["ModelAccess", "REGISTRY_FILE"]
