"""Per-browser session keys and the ownership rule of everything a session creates.

The UI keeps a random key in the browser (``gr.BrowserState``) and hands it to the app layer as a
plain string. What a session creates (an upload, a dataset version, a job, a model folder it
names) records the session's *owner id*: a hash of the key, so the key itself never reaches the
disk and reading the jobs folder does not let anyone act as its owner. Only the owner reads or
changes its things; shared things (shipped models, sample galleries, saved runs) are read-only.
An API client that sends no key is keyed by its connection (gradio's session hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import tempfile
import threading
from pathlib import Path

from rge_demo.data.items import process_lock
from rge_demo.errors import FolderNotAllowed, OwnershipError, SessionKeyError

KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")
CONNECTION_PREFIX = "connection-"
SECRET_FILE = ".browser-secret"



def new_key() -> str:
    """A fresh per-browser key (32 URL-safe characters, 192 random bits)."""
    return secrets.token_urlsafe(24)


def is_key(value) -> bool:
    return isinstance(value, str) and bool(KEY_PATTERN.fullmatch(value))


def session_key(browser_key, connection: str | None = None) -> str:
    """The browser's key, else one made from the connection's id (an API client that sent no key)."""
    if is_key(browser_key):
        return browser_key
    if browser_key not in (None, ""):
        raise SessionKeyError("the session key must be 16-128 letters, digits, '-' or '_'; "
                              "reload the page to get a new one")
    if connection and is_key(CONNECTION_PREFIX + connection):
        return CONNECTION_PREFIX + connection
    raise SessionKeyError("no session key: reload the page (the app makes one for each browser)")


def owner_id(key: str) -> str:
    """The id a session's things record as their owner: a hash of its key (32 hex digits)."""
    if not is_key(key):
        raise SessionKeyError("no valid session key: reload the page (the app makes one for each browser)")
    return hashlib.sha256(f"rge-demo session {key}".encode()).hexdigest()[:32]


def check_owner(what: str, record_owner: str, owner: str, *, change: bool) -> None:
    """Allow the owner; refuse anyone else with a sentence. ``record_owner`` "" (made before sessions
    had owners) is shared: readable by all, changed by none."""
    if record_owner == owner:
        return
    if not record_owner:
        if change:
            raise OwnershipError(f"{what} was made before sessions had owners and is read-only")
        return
    raise OwnershipError(f"{what} belongs to another session")


def check_server_folder(source, roots, what: str, variable: str, instead: str) -> Path:
    """The folder a request names, resolved, if it lies under one of ``roots`` (the operator's
    ``variable``, e.g. RGE_MODEL_ROOTS); else :class:`FolderNotAllowed` saying what to do ``instead``.
    Decided from the path alone, before anything there is looked at: the answer does not tell a
    visitor what exists elsewhere on the server."""
    roots = [Path(r).expanduser().resolve() for r in roots]
    if not roots:
        raise FolderNotAllowed(f"{str(source)!r} is read as a folder, and {what} from folders on the server are off "
                               f"in this app (the operator can allow folders with {variable}); {instead}")
    path = Path(str(source or "")).expanduser().resolve()
    if not any(path == r or r in path.parents for r in roots):
        raise FolderNotAllowed(f"{str(source)!r} is not under a folder this app allows {what} from "
                               f"({', '.join(map(str, roots))})")
    return path


def browser_secret(root: str | os.PathLike) -> str:
    """The secret that encrypts the key in the browser, made once and kept in ``root`` (mode 0600), so
    the keys stored in browsers still open after an app restart. It is written whole to a temporary
    file and then linked in place, so no reader (another worker process starting at the same time)
    sees it half-written; an empty file left by a crash is replaced (an empty secret would make
    Gradio pick a new one at every start, and every browser's key would stop opening)."""
    path = Path(root) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        with contextlib.suppress(FileNotFoundError):
            if secret := path.read_text().strip():
                return secret
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{SECRET_FILE}.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
                f.flush()
                os.fsync(f.fileno())
            if path.exists():  # empty: replace it
                os.replace(tmp, path)
            else:
                with contextlib.suppress(FileExistsError):  # another process linked its own first: read that
                    os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return path.read_text().strip()


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive lock on ``path`` across threads and processes (creates the file). Not re-entrant."""
    path = Path(path)
    with _GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(str(path), threading.Lock())
    with thread_lock, process_lock(path):
        yield


__all__ = ["browser_secret", "check_owner", "file_lock", "is_key", "new_key", "owner_id", "session_key"]
