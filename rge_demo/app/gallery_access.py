"""Which galleries each session sees: the shared sample galleries plus the ones it brought.

A session registers a gallery from a folder on the server, an uploaded zip, an image folder with
labels or a local MMEB-eval subset (:func:`~rge_demo.app.user_galleries.build_gallery`). It is
written under ``root/<owner id>/<name>/`` and listed, searched and removed by its owner alone
(another session naming it gets :class:`~rge_demo.errors.OwnershipError`); the sample galleries are
read-only for everyone. Registered galleries are found again after an app restart.

A gallery's internal name (the key of the embedding cache and of the app's indexes) is
``"<name> [<owner id prefix>]"``, so two sessions may both call theirs "photos". Embedding runs in
a background thread per gallery; :meth:`GalleryAccess.status` reports its progress.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from rge_demo.data.items import Gallery, ManifestError
from rge_demo.errors import OwnershipError, RGEUserError

from .sessions import owner_id
from .user_galleries import build_gallery, check_name

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class GalleryNotFound(RGEUserError, LookupError):
    """A gallery name that is neither a sample gallery nor one of this session's."""


def internal_name(name: str, owner: str) -> str:
    return f"{name} [{owner[:6]}]"


class GalleryAccess:
    """Per-session gallery lists over the shared sample galleries."""

    def __init__(self, root: str | os.PathLike, shared: dict[str, Gallery]):
        self.root = Path(root)
        self.shared = shared
        self._lock = threading.RLock()
        self._own: dict[str, tuple[str, Gallery]] = {}  # internal name -> (owner, gallery)
        self._building: set[str] = set()  # internal names being registered (reserved, not yet listed)
        self._status: dict[str, dict] = {}
        for manifest in sorted(self.root.glob("*/*/manifest.json")):
            try:
                g = Gallery.load(manifest.parent)
            except ManifestError as e:
                log.error("skipping user gallery %s: %s", manifest.parent, e)
                continue
            self._own[g.name] = (manifest.parent.parent.name, g)

    # -- reading -------------------------------------------------------------------------------
    def names(self, key: str | None) -> list[str]:
        """The sample galleries, then this session's own (internal names)."""
        owner = owner_id(key) if key else None
        with self._lock:
            own = sorted(n for n, (o, _) in self._own.items() if o == owner)
        return sorted(self.shared) + own

    def get(self, name: str, key: str | None = None) -> Gallery:
        """A sample gallery (anyone) or one of this session's; another session's is refused."""
        if name in self.shared:
            return self.shared[name]
        with self._lock:
            entry = self._own.get(name)
        if entry is None:
            raise GalleryNotFound(f"no gallery named {name!r}: pick one from the list, or register it first")
        if not key or entry[0] != owner_id(key):
            raise OwnershipError(f"gallery {name!r} belongs to another session")
        return entry[1]

    def status(self, name: str, key: str | None = None) -> dict:
        """``{"state": "ready" | "embedding" | "failed" | "registered", "done", "total", "error"}``."""
        g = self.get(name, key)
        with self._lock:
            return dict(self._status.get(g.name, {"state": "registered", "done": 0, "total": len(g.items),
                                                   "error": ""}))

    # -- changing ------------------------------------------------------------------------------
    def register(self, key: str, source: str | os.PathLike, name: str, **kw) -> Gallery:
        """Build a gallery from ``source`` (see :func:`build_gallery`'s keywords) for this session."""
        owner = owner_id(key)
        name = check_name(name)
        full = internal_name(name, owner)
        with self._lock:
            if full in self._own or full in self._building:
                raise RGEUserError(f"you already have a gallery named {name!r}: choose another name")
            self._building.add(full)  # reserved; the build (zip extraction, image checks) runs unlocked
        try:
            g = build_gallery(source, name, self.root / owner, **kw)
            g.name = full
            g.save()
            with self._lock:
                self._own[full] = (owner, g)
        finally:
            with self._lock:
                self._building.discard(full)
        log.info("registered gallery %r: %d items, %d queries", full, len(g.items), len(g.queries))
        return g

    def remove(self, name: str, key: str) -> None:
        g = self.get(name, key)
        if name in self.shared:
            raise OwnershipError(f"{name!r} is a sample gallery and is read-only")
        with self._lock:
            self._own.pop(name, None)
            self._status.pop(name, None)
        shutil.rmtree(g.root, ignore_errors=True)

    def embed_in_background(self, name: str, key: str | None, build: Callable[[Progress], None]) -> dict:
        """Run ``build(progress)`` (which embeds the gallery, reporting ``progress(done, total)``) in a
        thread, once at a time per gallery; returns the status."""
        g = self.get(name, key)
        with self._lock:
            if self._status.get(g.name, {}).get("state") == "embedding":
                return dict(self._status[g.name])
            # This registration's own entry: after a remove (and a new gallery of the same name) the
            # thread's updates land in it, not in the new gallery's status.
            entry = self._status[g.name] = {"state": "embedding", "done": 0, "total": len(g.items), "error": ""}

        def progress(done: int, total: int) -> None:
            with self._lock:
                entry.update(done=done, total=total)

        def run() -> None:
            try:
                build(progress)
                state = {"state": "ready", "done": len(g.items), "error": ""}
            except Exception as e:  # reported in the status, the app keeps serving
                log.exception("embedding gallery %s failed", g.name)
                state = {"state": "failed", "error": str(e) if isinstance(e, RGEUserError | ValueError)
                         else f"embedding failed ({type(e).__name__}); see the app's log"}
            with self._lock:
                entry.update(state)

        threading.Thread(target=run, name=f"rge-embed-{g.name}", daemon=True).start()
        return self.status(name, key)


__all__ = ["GalleryAccess", "GalleryNotFound", "internal_name"]
