"""Uploaded training pairs: safe zip extraction, row-by-row validation, and the trainer's pairs file.

An upload is a manifest of pairs (JSON Lines or CSV, columns = :data:`PAIR_FIELDS`) plus the images
it names, either as a separate zip or inside the same zip (``manifest.jsonl`` / ``manifest.csv`` /
``pairs.jsonl`` at the root or in one top folder). A separate zip may hold the images at its root,
under ``images/`` or under one top folder: :func:`unpack_upload` finds the folder where the
manifest's paths (e.g. ``images/x.png``) resolve. Nothing is trusted:

* :func:`extract_zip` (from :mod:`rge_demo.data.safezip`) checks every entry in the central
  directory BEFORE writing anything, then counts the bytes again while streaming.
* :func:`validate` reports every problem as a row ``(line, field, problem)``; images are decoded
  through :func:`rge_demo.data.images.load_image` with a pixel bound (decompression bombs). A text
  the model reads that holds one of its control tokens (``<emb>``, ``<|image_pad|>``...) is such a
  problem: the processor would read it as the token, as Compare refuses it too.
* :func:`build_dataset` writes only valid rows; with problems it refuses unless told to skip them.

Pickle-capable files (``.pkl``, ``.pt``, ``.npy``...) are refused: an upload is data, never code.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from rge_demo.data.images import ImageError, content_hash, load_image
from rge_demo.data.items import atomic_write_text
from rge_demo.data.safezip import (  # noqa: F401  (re-exported: part of the upload API)
    IGNORED_PARTS, IMAGE_SUFFIXES, MANIFEST_NAMES, UploadError, UploadLimits, extract_zip,
)
from rge_demo.data.sample_upload import make_sample_upload  # noqa: F401  (part of this module's API)
from rge_demo.embedding.prompts import EMB_TOKEN, INSTRUCTIONS, MMEB_IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)

PAIR_FIELDS = ("query_text", "query_image", "target_text", "target_image", "rationale", "task",
               "meta_task", "query_instruction", "target_instruction", "target_id")
"""The columns of a manifest and the fields of a pairs file (the trainer's reader uses the same)."""

TEXT_FIELDS = ("query_text", "target_text", "rationale", "task", "meta_task", "query_instruction",
               "target_instruction", "target_id")
IMAGE_FIELDS = ("query_image", "target_image")
MODEL_TEXT_FIELDS = ("query_text", "query_instruction", "target_text", "target_instruction", "rationale")
"""The text fields that reach the model's prompts (so must hold no control token)."""


@functools.cache
def control_tokens() -> tuple[str, ...]:
    """The model's control tokens, longest first: the tokens the shipped tokenizers add
    (:data:`rge_demo.models.micro.SPECIAL_TOKENS`, the Qwen chat and vision tokens and ``<emb>``) and MMEB's
    ``<|image_1|>`` (an image slot under the reference profile), which the Encoder's ``check_text`` refuses
    in Compare's texts. Imported on first use: it loads transformers."""
    from rge_demo.models.micro import SPECIAL_TOKENS

    return tuple(sorted(set(SPECIAL_TOKENS) | {EMB_TOKEN, MMEB_IMAGE_PLACEHOLDER}, key=len, reverse=True))


def control_token_in(text: str) -> str | None:
    """The first control token ``text`` holds (see :func:`control_tokens`), else None."""
    return min((t for t in control_tokens() if t in text), key=text.find, default=None)


def holds_control_token(token: str) -> str:
    """How a refusal says a text holds ``token``: what the model would do with it, and the fix."""
    return f"contains {token!r}, one of the model's control tokens (it would be read as that token, not as text): remove it"


def find_manifest(root: str | os.PathLike) -> Path:
    """The manifest at ``root`` or in its single top folder (names in :data:`MANIFEST_NAMES`)."""
    root = Path(root)
    folders = [root] + [d for d in sorted(root.iterdir()) if d.is_dir() and d.name not in IGNORED_PARTS]
    for folder in folders[:1] + (folders[1:] if len(folders) == 2 else []):
        for name in MANIFEST_NAMES:
            if (folder / name).is_file():
                return folder / name
    raise UploadError(f"no manifest found: put one of {list(MANIFEST_NAMES)} at the zip's root "
                      "or in its single top folder")


def unpack_upload(job_dir: str | os.PathLike, manifest: str | os.PathLike | None = None,
                  archive: str | os.PathLike | None = None, limits: UploadLimits | None = None) -> tuple[Path, Path]:
    """Put an upload under ``job_dir/upload``; returns ``(manifest_path, image_root)``.

    Either a manifest plus a zip of images, a manifest alone (text-only pairs), or one zip with both.
    A refused upload (:class:`UploadError`, or any error raised midway) leaves nothing behind:
    ``job_dir/upload`` is removed again when this call made it.
    """
    if manifest is None and archive is None:
        raise UploadError("nothing uploaded: give a manifest (.jsonl/.csv) and/or a zip")
    limits = limits or UploadLimits()
    if manifest is not None:  # checked before anything is written
        suffix = Path(manifest).suffix.lower()
        if suffix not in (".jsonl", ".csv"):
            raise UploadError(f"{Path(manifest).name}: the manifest must be .jsonl or .csv, got {suffix!r}")
        _check_manifest_size(Path(manifest), limits)
    upload = Path(job_dir) / "upload"
    fresh = not upload.exists()
    try:
        return _unpack(upload, manifest, archive, limits)
    except BaseException:
        if fresh:
            shutil.rmtree(upload, ignore_errors=True)
        raise


def _check_manifest_size(path: Path, limits: UploadLimits, name: str = "") -> None:
    if path.stat().st_size > limits.max_file_bytes:
        raise UploadError(f"{name or path.name}: manifest over {limits.max_file_bytes:,} bytes")


def _unpack(upload: Path, manifest: str | os.PathLike | None, archive: str | os.PathLike | None,
            limits: UploadLimits) -> tuple[Path, Path]:
    files = upload / "files"
    files.mkdir(parents=True, exist_ok=True)
    if archive is not None:
        extract_zip(archive, files, limits)
    if manifest is None:
        path = find_manifest(files)
        return path, _image_root([path.parent], _image_refs(path, limits), upload)
    copy = upload / f"manifest{Path(manifest).suffix.lower()}"
    shutil.copyfile(manifest, copy)
    _check_manifest_size(copy, limits, Path(manifest).name)  # it may have grown since it was checked
    top = [p for p in files.iterdir() if p.name not in IGNORED_PARTS]
    candidates = ([top[0]] if len(top) == 1 and top[0].is_dir() else []) + [files]
    return copy, _image_root(candidates, _image_refs(copy, limits), upload)


def _image_refs(manifest: Path, limits: UploadLimits) -> list[PurePosixPath]:
    """The safe relative image paths a manifest names (best effort: :func:`validate` reports the rest)."""
    if manifest.stat().st_size > limits.max_file_bytes:
        return []
    try:
        text = manifest.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return []
    scratch = ValidationReport(manifest, manifest.parent)  # its problems are validate()'s to report
    refs = []
    for _, rec in _records(text, manifest.suffix.lower(), scratch):
        for k in IMAGE_FIELDS:
            value = rec.get(k)
            if isinstance(value, str) and _safe_relative(value.strip()):
                refs.append(PurePosixPath(value.strip()))
    return refs


def _safe_relative(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and "\\" not in rel and not p.is_absolute() and not re.match(r"^[A-Za-z]:", rel) \
        and ".." not in p.parts


def _image_root(candidates: list[Path], refs: list[PurePosixPath], upload: Path) -> Path:
    """The folder in which the manifest's image paths resolve as written.

    ``candidates`` are tried in order (the zip's single top folder, then its root; or the folder of a
    manifest found in the zip); the one where most paths resolve wins. When the paths share one first
    folder (``images/x.png``) that the zip does not have (it holds ``x.png`` at its root or in one top
    folder), the named files are moved under ``upload/image-root/images/`` so they resolve as written.
    """
    def found(root: Path, strip: int) -> list[PurePosixPath]:
        return [r for r in refs if len(r.parts) > strip and root.joinpath(*r.parts[strip:]).is_file()]

    best = max(candidates, key=lambda root: len(found(root, 0)))  # the first on a tie
    hits = len(found(best, 0))
    if not refs or hits == len(refs) or len({r.parts[0] for r in refs}) != 1:
        return best
    for root in candidates:
        flat = found(root, 1)
        if len(flat) > hits:
            base = upload / "image-root"
            for r in flat:
                dst = base.joinpath(*r.parts)
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    root.joinpath(*r.parts[1:]).rename(dst)
            log.info("images named as %s/... found flat in %s; moved under %s", refs[0].parts[0], root, base)
            return base
    return best


# ------------------------------------------------------------------------------------ validation
@dataclass
class Problem:
    line: int  # 1-based line of the manifest (a CSV's header is line 1); 0: the whole file
    field: str
    problem: str


@dataclass
class ValidationReport:
    """Every problem of an upload as a row, the valid rows, and counts per task kind."""

    manifest_path: Path
    image_root: Path
    n_rows: int = 0
    name: str = ""  # the manifest as the person knows it (the upload's file name); default its stored name
    ok_rows: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    task_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.ok_rows)

    @property
    def bad_lines(self) -> list[int]:
        return sorted({p.line for p in self.problems if p.line > 0})

    def add(self, line: int, fld: str, problem: str) -> None:
        self.problems.append(Problem(line, fld, problem))

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(p) for p in self.problems], columns=["line", "field", "problem"])

    def rows_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(self.ok_rows, columns=["line", *PAIR_FIELDS])

    def summary(self) -> str:
        head = (f"{self.name or self.manifest_path.name}: {self.n_rows} row(s), {len(self.ok_rows)} valid, "
                f"{len(self.problems)} problem(s)")
        if self.task_counts:
            head += "; per task: " + ", ".join(f"{t} {n}" for t, n in sorted(self.task_counts.items()))
        if self.problems:
            head += ". Fix the file, or skip the listed rows."
        return head


def _decode(data: bytes, report: ValidationReport) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        report.add(line, "", f"not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
                             "(save the file as UTF-8)")
        return None


def _records(text: str, suffix: str, report: ValidationReport) -> list[tuple[int, dict]]:
    """``(line, record)`` pairs; malformed lines and header problems go to the report."""
    out: list[tuple[int, dict]] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        for col in header:
            if col not in PAIR_FIELDS:
                report.add(1, col, f"unknown column (known: {', '.join(PAIR_FIELDS)})")
        if not {"query_text", "query_image"} & set(header) or not {"target_text", "target_image"} & set(header):
            report.add(1, "", "missing required columns: a pair needs query_text and/or query_image, "
                              "and target_text and/or target_image")
            with contextlib.suppress(csv.Error):  # the rows are still counted: "2 row(s), 0 valid", not "0 row(s)"
                report.n_rows = sum(1 for _ in reader)
            return []
        start = 2
        try:
            for rec in reader:
                report.n_rows += 1
                if None in rec:
                    report.add(start, "", f"{len(rec[None])} more value(s) than columns")
                elif reader.line_num > start:  # a quoted value ran over line ends: most often a quote left open
                    field = next((k for k, v in rec.items() if v and "\n" in v), "")
                    report.add(start, field or "", f"a value runs over lines {start}-{reader.line_num}: a quote "
                                                   "left open? Close it (a text here is one line)")
                else:
                    out.append((start, {k: v for k, v in rec.items() if k in PAIR_FIELDS}))
                start = reader.line_num + 1
        except csv.Error as e:  # a field over csv's size limit, a stray quote at the end...
            report.add(start, "", f"unreadable CSV from here on: {e}")
        return out
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        report.n_rows += 1
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            report.add(n, "", f"malformed JSON: {e.msg} at column {e.colno}")
            continue
        if not isinstance(rec, dict):
            report.add(n, "", "a line must hold one JSON object")
            continue
        unknown = [k for k in rec if k not in PAIR_FIELDS]
        for k in unknown:
            report.add(n, str(k), f"unknown column (known: {', '.join(PAIR_FIELDS)})")
        if not unknown:
            out.append((n, rec))
    if out and not any(r.get("query_text") or r.get("query_image") for _, r in out):
        report.add(0, "", "missing required columns: no row has query_text or query_image")
        return []
    return out


def _image_ok(rel: str, root: Path, limits: UploadLimits, cache: dict) -> str:
    """Content hash of a valid image; raises ValueError with the problem otherwise."""
    p = PurePosixPath(rel)
    if not _safe_relative(rel):
        raise ValueError(f"image path must be relative inside the upload, got {rel!r}")
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{rel!r}: not an image file type ({sorted(IMAGE_SUFFIXES)})")
    path = root.joinpath(*p.parts)
    if rel in cache:
        return cache[rel]
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{rel!r} resolves outside the upload")
    if not path.is_file():
        raise ValueError(f"image not found: {rel}")
    load_image(path, name=rel, max_pixels=limits.max_pixels)  # raises ImageError
    cache[rel] = content_hash(path)
    return cache[rel]


def _check_row(n: int, rec: dict, root: Path, limits: UploadLimits, report: ValidationReport,
               cache: dict) -> tuple | None:
    """The row's duplicate key, or None when it has a problem (reported)."""
    before = len(report.problems)
    clean = {}
    for k, v in rec.items():
        if v is None or v == "":
            continue
        if not isinstance(v, str):
            report.add(n, k, f"must be a string, got {type(v).__name__}")
            continue
        if len(v) > limits.max_text_chars:
            report.add(n, k, f"{len(v):,} characters, over the limit of {limits.max_text_chars:,}")
            continue
        clean[k] = v.strip() if k in TEXT_FIELDS else v
    for k in MODEL_TEXT_FIELDS:
        if k in clean and (token := control_token_in(clean[k])):
            report.add(n, k, f"{k} {holds_control_token(token)}")
    if clean.get("meta_task") and clean["meta_task"] not in INSTRUCTIONS:
        report.add(n, "meta_task", f"unknown task kind {clean['meta_task']!r}; use one of {sorted(INSTRUCTIONS)}")
    hashes = {}
    for k in IMAGE_FIELDS:
        if k in clean:
            try:
                hashes[k] = _image_ok(clean[k], root, limits, cache)
            except (ValueError, ImageError) as e:
                report.add(n, k, str(e))
    given = {k for k, v in rec.items() if v is not None and v != ""}  # bad values are reported above
    has_q, has_t = bool(given & {"query_text", "query_image"}), bool(given & {"target_text", "target_image"})
    if not has_q and not has_t:
        report.add(n, "", "empty pair: no query and no target")
    elif not has_q:
        report.add(n, "query_text", "empty query side: give query_text and/or query_image")
    elif not has_t:
        report.add(n, "target_text", "empty target side: give target_text and/or target_image")
    if len(report.problems) > before:
        return None
    rec.clear()
    rec.update(clean)
    return (clean.get("query_instruction"), clean.get("query_text"), hashes.get("query_image"),
            clean.get("target_text"), hashes.get("target_image"))


def validate(manifest_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
             limits: UploadLimits | None = None, name: str = "") -> ValidationReport:
    """Check a manifest and the images it names; every problem becomes a row of the report, whose
    summary calls the manifest ``name`` (default: its file name)."""
    limits = limits or UploadLimits()
    path = Path(manifest_path)
    report = ValidationReport(path, Path(image_root) if image_root is not None else path.parent, name=name)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        report.add(0, "", f"the manifest must be .jsonl or .csv, got {suffix!r}")
        return report
    if not path.is_file():
        report.add(0, "", "manifest file not found")
        return report
    if path.stat().st_size > limits.max_file_bytes:
        report.add(0, "", f"manifest over {limits.max_file_bytes:,} bytes")
        return report
    text = _decode(path.read_bytes(), report)
    if text is None:
        return report
    if not text.strip():
        report.add(0, "", "empty file: no rows")
        return report
    records = _records(text, suffix, report)
    if len(records) > limits.max_rows:
        report.add(0, "", f"{len(records):,} rows, over the limit of {limits.max_rows:,}")
        return report
    seen: dict[tuple, int] = {}
    cache: dict[str, str] = {}
    for n, rec in records:
        key = _check_row(n, rec, report.image_root, limits, report, cache)
        if key is None:
            continue
        if key in seen:
            report.add(n, "", f"duplicate pair: same query and target as line {seen[key]}")
            continue
        seen[key] = n
        report.ok_rows.append({"line": n, **rec})
        kind = rec.get("task") or rec.get("meta_task") or "retrieval"
        report.task_counts[kind] = report.task_counts.get(kind, 0) + 1
    if not report.ok_rows and not report.problems:
        report.add(0, "", "empty file: no rows")
    report.problems.sort(key=lambda p: p.line)  # stable: a line's problems keep their order
    return report


# ---------------------------------------------------------------------------------------- dataset
def _copy_image(root: Path, rel: str, data: Path) -> str:
    """Copy a validated image under ``data/images/`` keeping its name; returns the new relative path."""
    src = root.joinpath(*PurePosixPath(rel).parts)
    new = rel if rel.startswith("images/") else f"images/{rel}"
    dst = data.joinpath(*PurePosixPath(new).parts)
    if dst.exists() and content_hash(dst) != content_hash(src):  # two names that meet: keep both
        new = f"images/{content_hash(src)[:16]}/{src.name}"
        dst = data.joinpath(*PurePosixPath(new).parts)
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return new


def build_dataset(report: ValidationReport, job_dir: str | os.PathLike, skip_bad: bool = False, *,
                  name: str = "pairs.jsonl", rationales: dict[int, str] | None = None) -> Path:
    """Write ``job_dir/data/<name>`` (+ ``data/images/``) from the report's valid rows, in their order.

    ``rationales`` (``{manifest line: text}``) replace the manifest's rationale of those rows (saved
    edits carried into a rebuilt dataset). Images are copied once and never overwritten, so several
    pairs files can share ``data/images/``. With problems and ``skip_bad=False`` nothing is written
    and :class:`UploadError` says what to do.
    """
    if report.problems and not skip_bad:
        lines = report.bad_lines
        listed = f" the rows on line(s) {lines[:20]}{' ...' if len(lines) > 20 else ''}" if lines else " the listed rows"
        raise UploadError(f"{report.name or report.manifest_path.name}: {len(report.problems)} problem(s); fix the file, "
                          f"or choose to skip{listed}")
    if not report.ok_rows:
        raise UploadError(f"{report.name or report.manifest_path.name}: no valid rows to train on")
    data = Path(job_dir) / "data"
    images = data / "images"
    images.mkdir(parents=True, exist_ok=True)
    out_lines = []
    for row in report.ok_rows:
        rec = {k: row[k] for k in PAIR_FIELDS if row.get(k)}
        if rationales and rationales.get(row["line"]):
            rec["rationale"] = rationales[row["line"]]
        for k in IMAGE_FIELDS:
            if k in rec:
                rec[k] = _copy_image(report.image_root, rec[k], data)
        rec.setdefault("task", rec.get("meta_task", "retrieval"))
        out_lines.append(json.dumps(rec, ensure_ascii=False))
    pairs = data / name
    atomic_write_text(pairs, "\n".join(out_lines) + "\n")
    log.info("wrote %d pairs to %s (%d skipped)", len(out_lines), pairs, len(report.bad_lines))
    return pairs
