"""What the app tells a visitor: messages with the server's own folders reduced to file names, and counts
of things with their noun in the right number."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from rge_demo.config import REPO_ROOT, Settings, get_settings

# An absolute path of two or more parts (not inside a URL).
_SERVER_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"`]+/)+([^\s/'\"`]+)")


def server_dirs(settings: Settings | None = None) -> list[str]:
    """Folders only the server knows: Gradio's upload cache, the app's cache folder, the repository."""
    settings = settings or get_settings()
    gradio_cache = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    return [str(Path(d).resolve()) for d in (gradio_cache, settings.cache_dir, REPO_ROOT)]


def public_message(message, roots: list[str] | None = None) -> str:
    """A user-facing message in which every absolute path inside one of ``roots`` (default
    :func:`server_dirs`) is reduced to its file name: a message must not tell a visitor where the
    server keeps its files. Paths the user gave (a model folder) stay as they are."""
    roots = server_dirs() if roots is None else roots

    def shorten(m: re.Match) -> str:
        path = m.group(0)
        return m.group(1) if any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots) else path

    return _SERVER_PATH.sub(shorten, str(message))


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 rationale``, ``2 rationales`` (``plural`` when adding an "s" is wrong)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
