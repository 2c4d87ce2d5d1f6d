"""Uploads and their datasets: owned by a session, versioned, immutable once built.

Layout under ``jobs_root/uploads/<upload id>/``::

    upload.json          owner, manifest, image root, sources, created
    report.json          the validation report as shown (summary, problems, counts): a reload shows it again
    upload/...           what was uploaded (zip extracted safely); never changed
    data/images/         the dataset's images, copied once, shared by every version
    data/v<N>.jsonl      version N of the dataset, a trainer pairs file (read-only once written)
    data/v<N>.json       its record: owner, source ("build" | "rationales"), parent, manifest line per row

A version is never changed: "Build dataset" again and saving drafted or edited rationales each
write version N+1, which carries forward every rationale saved in earlier versions (matched by
manifest line). A job names the version it trains on, so a rebuild cannot change what a running or
resumed job reads. Dataset ids are ``<upload id>/v<N>``; the bare upload id means its newest version.

What is deleted when (:meth:`DatasetStore.sweep`, run by the Workbench at start and periodically):

* a refused upload (:class:`UploadError`: zip bomb, too many files, an oversize manifest, a bad path,
  a file over ``max_upload_bytes``...) leaves nothing: its folder is removed before the error
  reaches the user, and an upload with no valid row keeps only its report (its files are removed
  at once: nothing can be built from them);
* an upload never built into a dataset is deleted whole once its last change is older than the
  retention time (``RGE_RETENTION_HOURS``), and so is a folder a crash left half made;
* a built upload keeps its dataset versions (``data/``: the session's work, and the files its jobs
  read); only the uploaded files (``upload/``) go after the retention time, after which "Build
  dataset" asks for the files again. An upload a job records as its dataset is never deleted whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rge_demo.config import ASSETS_DIR
from rge_demo.data.items import atomic_write_text
from rge_demo.data.upload import (
    Problem, UploadError, ValidationReport, build_dataset, control_token_in, unpack_upload, validate,
)
from rge_demo.errors import RGEUserError

from .sessions import check_owner, file_lock

log = logging.getLogger(__name__)

SAMPLE_UPLOAD = ASSETS_DIR / "sample_upload" / "sample_upload.zip"
UPLOADS = "uploads"
UPLOAD_INFO = "upload.json"
REPORT_FILE = "report.json"
DATA = "data"
FILES = "upload"  # what was uploaded (unpack_upload's folder)
TRASH = ".deleting-"  # a folder being deleted is renamed to this prefix first (never listed)
MAX_SAVED_PROBLEMS = 1000  # rows of a report kept for a page reload (the summary counts them all)
MAX_RATIONALE_CHARS = 2_000
UPLOAD_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
DATASET_ID = re.compile(rf"(?P<upload>{UPLOAD_ID.pattern})(?:/v(?P<version>[1-9]\d{{0,5}}))?")


class DatasetError(RGEUserError, ValueError):
    """A dataset request that cannot be done (no such upload or version, a bad edit); says what to do."""


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable version of an upload's dataset."""

    upload: str
    version: int
    path: Path  # the pairs file (data/v<N>.jsonl)
    record: Mapping  # data/v<N>.json

    @property
    def id(self) -> str:
        return f"{self.upload}/v{self.version}"

    @property
    def n_pairs(self) -> int:
        return int(self.record.get("n_pairs", 0))

    @property
    def n_rationales(self) -> int:
        return int(self.record.get("n_rationales", 0))

    @property
    def label(self) -> str:
        """What a picker shows: upload, version, pairs and rationales."""
        return f"{self.upload} v{self.version} ({self.n_pairs} pairs, {self.n_rationales} with a rationale)"

    def rows(self) -> list[dict]:
        """The pairs records, each with its index in the file as ``row``."""
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [{"row": i, **json.loads(line)} for i, line in enumerate(line for line in lines if line.strip())]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class DatasetStore:
    """Every session's uploads and dataset versions under ``jobs_root/uploads``; owner ids come from
    :func:`rge_demo.app.sessions.owner_id`."""

    def __init__(self, jobs_root: str | os.PathLike, *, max_upload_bytes: int | None = None):
        self.root = Path(jobs_root).resolve() / UPLOADS
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_upload_bytes = max_upload_bytes  # the largest manifest or zip accepted (None: no limit)

    # -- uploads ---------------------------------------------------------------------------------
    def _new_dir(self) -> Path:
        while True:
            folder = self.root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            try:
                folder.mkdir()
                return folder
            except FileExistsError:  # the same second and the same 6 hex digits: draw again
                continue

    def new_upload(self, owner: str, manifest_file: str | os.PathLike | None = None,
                   archive_file: str | os.PathLike | None = None) -> tuple[Path, ValidationReport]:
        """Unpack an upload into a fresh folder owned by ``owner`` and validate it: ``(folder, report)``."""
        if not manifest_file and not archive_file:
            raise UploadError("nothing uploaded: give a manifest (.jsonl/.csv) and/or a zip of images")
        if archive_file and Path(archive_file).suffix.lower() != ".zip":
            raise UploadError(f"{Path(archive_file).name}: the archive must be a .zip file")
        for source in (manifest_file, archive_file):
            if source:
                self._check_size(Path(source))
        folder = self._new_dir()
        try:
            manifest, image_root = unpack_upload(folder, manifest_file or None, archive_file or None)
            shown = Path(manifest_file).name if manifest_file else f"{Path(archive_file).name}: {manifest.name}"
            report = validate(manifest, image_root, name=shown)
            self._save_report(folder, report)
            if not report.ok_rows:  # nothing can ever be built from it: keep the report, not the files
                shutil.rmtree(folder / FILES)
            info = {"owner": owner, "manifest": str(manifest), "manifest_name": shown, "image_root": str(image_root),
                    "sources": [Path(p).name for p in (manifest_file, archive_file) if p], "created": time.time()}
            atomic_write_text(folder / UPLOAD_INFO, json.dumps(info, indent=1) + "\n")  # last: the upload exists now
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a refused upload leaves nothing behind
            raise
        log.info("upload %s: %s", folder.name, report.summary())
        return folder, report

    def _check_size(self, path: Path) -> None:
        """Refuse a file over ``max_upload_bytes`` before anything is copied (the web app's own limit
        stops it earlier; this one holds for API callers and the library too)."""
        limit = self.max_upload_bytes
        try:
            size = path.stat().st_size
        except OSError:
            raise UploadError(f"{path.name}: the uploaded file is not there any more; upload it again") from None
        if limit is not None and size > limit:
            raise UploadError(f"{path.name}: {size / 2**20:,.1f} MB, over the upload limit of "
                              f"{limit / 2**20:,.0f} MB (RGE_MAX_UPLOAD_MB)")

    def sample_upload(self, owner: str) -> tuple[Path, ValidationReport]:
        """The shipped example upload (40 pairs from the synthetic world), as a fresh upload of ``owner``."""
        if not SAMPLE_UPLOAD.is_file():
            raise UploadError(f"the sample upload is missing ({SAMPLE_UPLOAD}); "
                              "make it with rge_demo.data.upload.make_sample_upload")
        return self.new_upload(owner, archive_file=SAMPLE_UPLOAD)

    def upload_dir(self, owner: str, upload: str, *, change: bool = False) -> Path:
        """The folder of an upload id that ``owner`` may read (``change``: may change); else an error."""
        text = str(upload or "").strip()
        if not text:
            raise DatasetError("no upload yet: upload a manifest and/or a zip, or try the sample upload")
        folder = self.root / text
        info = _read_json(folder / UPLOAD_INFO) if UPLOAD_ID.fullmatch(text) else {}
        if not info.get("owner"):  # unknown, malformed, or from before sessions had owners
            raise DatasetError(f"no upload {text!r}: validate an upload first")
        check_owner(f"upload {text}", info["owner"], owner, change=change)
        return folder

    def uploads(self, owner: str) -> list[str]:
        """``owner``'s upload ids, newest first."""
        ids = (p.name for p in self.root.iterdir() if UPLOAD_ID.fullmatch(p.name))
        return sorted((i for i in ids if _read_json(self.root / i / UPLOAD_INFO).get("owner") == owner), reverse=True)

    def report(self, owner: str, upload: str) -> ValidationReport:
        """Validate an upload again (e.g. for an API call that only knows the upload id)."""
        folder = self.upload_dir(owner, upload)
        self._check_files(folder)
        info = _read_json(folder / UPLOAD_INFO)
        return validate(info["manifest"], info["image_root"], name=info.get("manifest_name", ""))

    @staticmethod
    def _check_files(folder: Path) -> None:
        """Refuse to read an upload whose uploaded files are gone, saying why."""
        if (folder / FILES).is_dir():
            return
        if not _read_json(folder / REPORT_FILE).get("n_valid", 1):
            raise DatasetError(f"upload {folder.name} has no valid row to build from: fix the file and upload it again")
        raise DatasetError(f"the uploaded files of upload {folder.name} were deleted after the retention time "
                           "(RGE_RETENTION_HOURS); its dataset versions remain: upload the files again to build anew")

    @staticmethod
    def _save_report(folder: Path, report: ValidationReport) -> None:
        record = {"ok": report.ok, "summary": report.summary(), "task_counts": report.task_counts,
                  "n_valid": len(report.ok_rows), "n_problems": len(report.problems),
                  "problems": [vars(p) for p in report.problems[:MAX_SAVED_PROBLEMS]]}
        atomic_write_text(folder / REPORT_FILE, json.dumps(record, ensure_ascii=False) + "\n")

    def saved_report(self, owner: str, upload: str) -> dict:
        """The report as shown when the upload was validated, for a page reload (no image decoded again):
        ``{"ok", "summary", "task_counts", "problems": [Problem, ...] (the first 1000)}``."""
        record = _read_json(self.upload_dir(owner, upload) / REPORT_FILE)
        return {"ok": bool(record.get("ok")), "summary": str(record.get("summary", "")),
                "task_counts": dict(record.get("task_counts", {})),
                "problems": [Problem(int(p["line"]), str(p["field"]), str(p["problem"]))
                             for p in record.get("problems", [])]}

    # -- versions --------------------------------------------------------------------------------
    def _versions_in(self, folder: Path) -> list[DatasetVersion]:
        """Every version of one upload, oldest first."""
        out = []
        for meta in (folder / DATA).glob("v*.json"):
            m = re.fullmatch(r"v([1-9]\d*)\.json", meta.name)
            pairs = meta.with_suffix(".jsonl")
            if m and pairs.is_file():
                out.append(DatasetVersion(folder.name, int(m.group(1)), pairs, _read_json(meta)))
        return sorted(out, key=lambda v: v.version)

    def versions(self, owner: str, upload: str | None = None) -> list[DatasetVersion]:
        """``owner``'s dataset versions (of one upload, or of all), newest first."""
        uploads = [self.upload_dir(owner, upload).name] if upload else self.uploads(owner)
        return [v for u in uploads for v in reversed(self._versions_in(self.root / u))]

    def version(self, owner: str, dataset: str) -> DatasetVersion:
        """The version a dataset id names (``<upload>/v<N>``; a bare upload id: its newest version)."""
        text = str(dataset or "").strip()
        if not text:
            raise DatasetError("no dataset: build one from an upload first")
        m = DATASET_ID.fullmatch(text)
        if not m:
            raise DatasetError(f"no dataset {text!r}: a dataset is named <upload id>/v<N>")
        folder = self.upload_dir(owner, m.group("upload"))
        versions = self._versions_in(folder)
        if not versions:
            raise DatasetError(f"upload {folder.name} has no dataset yet: press Build dataset first")
        if m.group("version") is None:
            return versions[-1]
        wanted = int(m.group("version"))
        for v in versions:
            if v.version == wanted:
                return v
        raise DatasetError(f"upload {folder.name} has no version v{wanted} (it has v1..v{versions[-1].version})")

    def _saved_rationales(self, folder: Path) -> dict[int, str]:
        """``{manifest line: rationale}`` over every version, oldest first (a later save wins)."""
        saved: dict[int, str] = {}
        for v in self._versions_in(folder):
            lines = v.record.get("lines") or []
            for line, row in zip(lines, v.rows()):
                if row.get("rationale"):
                    saved[int(line)] = row["rationale"]
        return saved

    def _write_version(self, folder: Path, owner: str, source: str, lines: list[int], parent: int | None,
                       write_pairs, **extra) -> DatasetVersion:
        """Claim the next version number of ``folder`` and write it (under the upload's lock)."""
        if not (folder / UPLOAD_INFO).is_file():  # swept while this request waited for the lock
            raise DatasetError(f"upload {folder.name} expired (RGE_RETENTION_HOURS): upload the files again")
        data = folder / DATA
        data.mkdir(exist_ok=True)
        existing = self._versions_in(folder)
        number = existing[-1].version + 1 if existing else 1
        pairs = write_pairs(f"v{number}.jsonl")
        pairs.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # immutable: no one writes a version twice
        rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(rows) != len(lines):
            raise AssertionError(f"{pairs}: {len(rows)} rows for {len(lines)} manifest lines")
        record = {"version": number, "owner": owner, "source": source, "parent": parent, "created": time.time(),
                  "n_pairs": len(rows), "n_rationales": sum(bool(r.get("rationale")) for r in rows),
                  "lines": lines, **extra}
        atomic_write_text(data / f"v{number}.json", json.dumps(record) + "\n")  # last: the version exists now
        log.info("dataset %s/v%d: %d pairs (%s)", folder.name, number, len(rows), source)
        return DatasetVersion(folder.name, number, pairs, record)

    def build(self, owner: str, upload: str, report: ValidationReport | None = None,
              skip_bad: bool = False) -> DatasetVersion:
        """A new version from the upload's valid rows, carrying forward every rationale saved before."""
        folder = self.upload_dir(owner, upload, change=True)
        self._check_files(folder)
        if report is None or not report.ok_rows or not Path(report.manifest_path).resolve().is_relative_to(folder):
            report = self.report(owner, folder.name)  # a report from elsewhere (or a reload) is not trusted
        with file_lock(folder / ".lock"):
            carried = self._saved_rationales(folder)
            latest = self._versions_in(folder)
            return self._write_version(
                folder, owner, "build", [row["line"] for row in report.ok_rows],
                latest[-1].version if latest else None,
                lambda name: build_dataset(report, folder, skip_bad=bool(skip_bad), name=name, rationales=carried),
                skip_bad=bool(skip_bad))

    def save_rationales(self, owner: str, dataset: str, drafts: Mapping[int, str]) -> DatasetVersion:
        """A new version: ``dataset``'s rows with ``drafts`` (``{row: rationale}``) and every rationale
        saved in other versions; returns ``dataset`` itself when nothing changes. Empty drafts are skipped."""
        base = self.version(owner, dataset)
        folder = self.upload_dir(owner, base.upload, change=True)
        rows = [{k: v for k, v in r.items() if k != "row"} for r in base.rows()]
        edits = {}
        for i, text in drafts.items():
            if not 0 <= int(i) < len(rows):
                raise DatasetError(f"rationale for row {i}: dataset {base.id} has rows 0..{len(rows) - 1}")
            text = " ".join(str(text).split())
            if len(text) > MAX_RATIONALE_CHARS:
                raise DatasetError(f"rationale for row {i}: {len(text):,} characters, over the limit of "
                                   f"{MAX_RATIONALE_CHARS:,}")
            if token := control_token_in(text):
                raise DatasetError(f"rationale for row {i} contains {token!r}, one of the model's control tokens: "
                                   "remove it")
            if text:
                edits[int(i)] = text
        with file_lock(folder / ".lock"):
            carried = self._saved_rationales(folder)
            lines = [int(x) for x in base.record.get("lines", [])]
            new_rows = []
            for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
                text = edits.get(i) or carried.get(line) or row.get("rationale")
                new_rows.append({**row, "rationale": text} if text else row)
            if new_rows == rows:
                return base

            def write(name: str) -> Path:
                path = folder / DATA / name
                atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new_rows))
                return path

            return self._write_version(folder, owner, "rationales", lines, base.version, write, edited_rows=sorted(edits))

    # -- retention -------------------------------------------------------------------------------
    @staticmethod
    def _last_change(folder: Path) -> float:
        """When an upload last changed: the newest mtime of its records and versions (of the folder
        itself, and of its files, for one a crash left without records)."""
        def mtimes(paths):
            for path in paths:
                try:
                    yield path.stat().st_mtime
                except OSError:
                    continue

        records = list(mtimes([folder / UPLOAD_INFO, folder / REPORT_FILE, *(folder / DATA).glob("v*.json")]))
        return max(records or mtimes([folder, folder / FILES]), default=0.0)

    def _trash(self, path: Path) -> None:
        """Delete a folder: renamed first (so nothing lists or reads it half deleted), then removed."""
        doomed = self.root / f"{TRASH}{path.parent.name + '-' if path.parent != self.root else ''}{path.name}-" \
                             f"{uuid.uuid4().hex[:6]}"
        path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def sweep(self, max_age_s: float, keep: set[str] | frozenset[str] = frozenset(),
              now: float | None = None) -> list[str]:
        """Delete what expired (see the module's docstring); returns what went, as ``<upload id>`` (the
        whole upload) or ``<upload id>/upload`` (its uploaded files). ``keep``: upload ids that jobs
        record as their dataset, never deleted whole."""
        now = time.time() if now is None else now
        gone = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(TRASH):  # a sweep that stopped midway
                shutil.rmtree(path, ignore_errors=True)
                continue
            if not path.is_dir() or path.is_symlink() or not UPLOAD_ID.fullmatch(path.name):
                continue  # not an upload: not ours to delete
            if now - self._last_change(path) <= max_age_s:
                continue
            try:
                if not (path / UPLOAD_INFO).is_file():  # half made by a crash (no build can start on it)
                    if path.name not in keep:
                        self._trash(path)
                        gone.append(path.name)
                    continue
                with file_lock(path / ".lock"):  # not while a build or a save writes a version
                    if now - self._last_change(path) <= max_age_s:
                        continue  # a version was written while this waited
                    if not self._versions_in(path) and path.name not in keep:
                        self._trash(path)
                        gone.append(path.name)
                    elif (path / FILES).is_dir():
                        self._trash(path / FILES)
                        gone.append(f"{path.name}/{FILES}")
            except OSError as e:  # one stuck folder must not stop the sweep
                log.warning("could not delete expired upload %s: %s", path.name, e)
        if gone:
            log.info("retention: deleted %s", ", ".join(gone))
        return gone

    # -- reading a version -----------------------------------------------------------------------
    @staticmethod
    def summary(version: DatasetVersion) -> str:
        rows = version.rows()
        missing = sum(not r.get("rationale") for r in rows)
        tasks = pd.Series([r.get("task", "") for r in rows]).value_counts().sort_index()
        per_task = ", ".join(f"{t} {n}" for t, n in tasks.items())
        return (f"{version.id}: {len(rows)} pair(s) ({per_task}); {missing} without a rationale"
                + (" (draft them, or train the baseline stage)" if missing else ""))


__all__ = ["DATASET_ID", "DatasetError", "DatasetStore", "DatasetVersion", "SAMPLE_UPLOAD", "UPLOAD_ID"]
