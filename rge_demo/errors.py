"""One family of user-facing errors: a request a person can fix, said in one sentence.

Catch :class:`RGEUserError` and show its message: the CLI prints it on one line and exits with
code 2, the app shows it as a message. Every message names what is wrong (the file, the field, the
job) and, where it helps, what to do. Anything else that escapes is a bug and keeps its traceback.

Subclasses also derive from the built-in error they refine (``ValueError``, ``PermissionError``,
``LookupError``), so code that caught those before still does.
"""

from __future__ import annotations


class RGEUserError(Exception):
    """A problem with what the user asked for or gave; the message is one sentence that says what."""


class OwnershipError(RGEUserError, PermissionError):
    """Something (an upload, a dataset, a job, a model) that belongs to another browser session.

    Raised for reads as well as changes: a session sees and touches only its own work; shared
    things (shipped models, sample galleries, saved runs) are read-only for everyone.
    """


class FolderNotAllowed(RGEUserError, PermissionError):
    """A folder on the server, named in a request, outside the folders the operator allows for that use."""


class SessionKeyError(RGEUserError, ValueError):
    """A missing or malformed per-browser session key (the app makes one on the first page load)."""


def picklable(e: BaseException) -> BaseException:
    """``e`` itself when it survives pickling (to cross a pipe to another process), else a
    ``RuntimeError`` carrying its type and message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any exception that does not survive is sent as text
        return RuntimeError(f"{type(e).__name__}: {e}")


__all__ = ["OwnershipError", "RGEUserError", "SessionKeyError", "picklable"]
