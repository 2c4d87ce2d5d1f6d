"""Safe zip extraction for uploads: every entry is checked before a byte is written.

Checked from the central directory first (paths stay inside the destination: no absolute paths,
``..``, drive letters or backslashes; no symlinks, devices or encrypted entries; limits on file
count, per-file and total size and compression ratio), then again while streaming, because the
sizes in the headers can lie. Pickle-capable files (``.pkl``, ``.pt``, ``.npy``...) are refused:
an upload is data, never code. :mod:`rge_demo.data.upload` re-exports this module's API.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rge_demo.errors import RGEUserError

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "pairs.jsonl")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
ACCEPTED_SUFFIXES = IMAGE_SUFFIXES | {".jsonl", ".csv", ".json", ".txt", ".md"}
PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".npy", ".npz", ".joblib", ".ckpt", ".bin"}
IGNORED_PARTS = {"__MACOSX", ".DS_Store"}  # macOS archive litter, skipped silently
CHUNK = 1 << 16


class UploadError(RGEUserError, ValueError):
    """An upload that cannot be used; the message names the entry (or file) and the problem."""


@dataclass
class UploadLimits:
    """Bounds on what an upload may cost; every one is checked before the work it guards."""

    max_files: int = 20_000
    """Entries in a zip (folders excluded)."""
    max_total_bytes: int = 1 << 30
    """Sum of uncompressed sizes in a zip."""
    max_file_bytes: int = 64 << 20
    """Uncompressed size of one zip entry, and of the manifest."""
    max_ratio: float = 200.0
    """Uncompressed / compressed size of one entry (a zip bomb has thousands)."""
    ratio_min_bytes: int = 1 << 20
    """Entries smaller than this are not ratio-checked (tiny files compress oddly well)."""
    max_pixels: int = 16_000_000
    """Pixels of one image, checked from its header before decoding."""
    max_text_chars: int = 2_000
    """Characters of one text field."""
    max_rows: int = 100_000

# ------------------------------------------------------------------------------------ extraction
def _check_entry_name(name: str) -> PurePosixPath:
    """The entry's relative path, or :class:`UploadError` for anything that could leave the folder."""
    if not name or "\x00" in name:
        raise UploadError(f"zip entry {name!r}: empty or NUL in the name")
    if "\\" in name:
        raise UploadError(f"zip entry {name!r}: backslash in the path (refused: it can hide '..' on Windows)")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UploadError(f"zip entry {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UploadError(f"zip entry {name!r}: '..' in the path would write outside the folder")
    if not parts:
        raise UploadError(f"zip entry {name!r}: no file name")
    return PurePosixPath(*parts)


def _entry_kind(info: zipfile.ZipInfo) -> str:
    """"dir", "file", or raise for links, devices, fifos and encrypted entries."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UploadError(f"zip entry {info.filename!r}: symbolic link (refused)")
    if mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UploadError(f"zip entry {info.filename!r}: special file (mode {oct(mode)}), refused")
    if info.flag_bits & 0x1:
        raise UploadError(f"zip entry {info.filename!r}: encrypted entries are not supported")
    return "dir" if info.is_dir() or stat.S_ISDIR(mode) else "file"


def _plan(zf: zipfile.ZipFile, limits: UploadLimits) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check the whole central directory; return the file entries to extract."""
    plan, seen, total = [], set(), 0
    for info in zf.infolist():
        rel = _check_entry_name(info.filename)
        if IGNORED_PARTS & set(rel.parts) or rel.name.startswith("._"):
            continue
        if _entry_kind(info) == "dir":
            continue
        suffix = rel.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise UploadError(f"zip entry {info.filename!r}: {suffix} files can hold pickled code; "
                              "uploads take images and a JSONL/CSV manifest only")
        if suffix not in ACCEPTED_SUFFIXES:
            raise UploadError(f"zip entry {info.filename!r}: file type {suffix or '(none)'!r} not accepted; "
                              f"expected images {sorted(IMAGE_SUFFIXES)} and a manifest")
        key = str(rel).lower()
        if key in seen:
            raise UploadError(f"zip entry {info.filename!r}: the same path appears twice")
        seen.add(key)
        if info.file_size > limits.max_file_bytes:
            raise UploadError(f"zip entry {info.filename!r}: {info.file_size:,} bytes uncompressed, "
                              f"over the per-file limit of {limits.max_file_bytes:,}")
        if info.file_size >= limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise UploadError(f"zip entry {info.filename!r}: compression ratio "
                              f"{info.file_size / max(1, info.compress_size):,.0f}:1 looks like a zip bomb "
                              f"(limit {limits.max_ratio:.0f}:1)")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UploadError(f"zip entry {info.filename!r}: total uncompressed size passes the limit of "
                              f"{limits.max_total_bytes:,} bytes")
        plan.append((info, rel))
        if len(plan) > limits.max_files:
            raise UploadError(f"zip entry {info.filename!r}: more than {limits.max_files:,} files in the zip")
    return plan


def _stream(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: UploadLimits, total: int) -> int:
    """Copy one entry, counting real bytes against the limits; returns the bytes written."""
    written = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with zf.open(info) as src, os.fdopen(os.open(target, flags, 0o644), "wb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > limits.max_file_bytes or written > info.file_size:
                raise UploadError(f"zip entry {info.filename!r}: more data than its header declares "
                                  f"({written:,} > {info.file_size:,} bytes)")
            if total + written > limits.max_total_bytes:
                raise UploadError(f"zip entry {info.filename!r}: total extracted size passes the limit")
            if written >= limits.ratio_min_bytes and written > limits.max_ratio * max(1, info.compress_size):
                raise UploadError(f"zip entry {info.filename!r}: expands past {limits.max_ratio:.0f}:1 (zip bomb)")
            dst.write(chunk)
    return written


def _mkdirs(folder: Path, made: list[Path]) -> None:
    """``mkdir -p folder``, appending each folder it creates to ``made`` (parents first)."""
    missing = []
    for p in (folder, *folder.parents):
        if p.is_dir():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            if not p.is_dir():
                raise
            continue
        made.append(p)


def extract_zip(zip_path: str | os.PathLike, dest_dir: str | os.PathLike,
                limits: UploadLimits | None = None) -> list[Path]:
    """Extract ``zip_path`` into ``dest_dir`` after checking every entry; returns the files written.

    On any problem (raised midway too, e.g. by an interrupt) nothing is left behind: the files
    already written and the folders this call made (``dest_dir`` included) are removed, and
    :class:`UploadError` names the entry.
    """
    limits = limits or UploadLimits()
    dest = Path(dest_dir)
    made: list[Path] = []  # folders this call created, parents first
    _mkdirs(dest, made)
    root = dest.resolve()
    written: list[Path] = []
    try:
        try:
            zf = zipfile.ZipFile(zip_path)
        except (zipfile.BadZipFile, OSError) as e:
            raise UploadError(f"{Path(zip_path).name}: not a readable zip file ({e})") from None
        with zf:
            plan = _plan(zf, limits)
            total = 0
            for info, rel in plan:
                target = root.joinpath(*rel.parts)
                try:
                    _mkdirs(target.parent, made)
                except (FileExistsError, NotADirectoryError):
                    raise UploadError(f"zip entry {info.filename!r}: a file of the zip has the name of "
                                      "its folder") from None
                if not target.parent.resolve().is_relative_to(root):
                    raise UploadError(f"zip entry {info.filename!r}: resolves outside the destination")
                if target.exists() or target.is_symlink():
                    raise UploadError(f"zip entry {info.filename!r}: {rel} already exists in the destination")
                try:
                    total += _stream(zf, info, target, limits, total)
                except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                    raise UploadError(f"zip entry {info.filename!r}: corrupt data ({e})") from None
                finally:
                    if target.exists():
                        written.append(target)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in reversed(made):  # deepest first; a folder that holds something else stays
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    log.info("extracted %d files from %s", len(written), zip_path)
    return written
