"""A user's own gallery from what they have: a folder, a zip, an image folder with labels, or MMEB-eval.

:func:`build_gallery` turns one of these into a :class:`~rge_demo.data.items.Gallery` written under
``dest`` (its ``manifest.json``), the form every tab and the embedding cache already read:

* a folder (or zip) holding a ``manifest.json``: the gallery as it is (validated);
* a folder (or zip) of images with ``labels.csv`` or ``labels.jsonl`` beside them: one item per
  row, columns ``file`` (or ``image``), ``label`` and an optional ``text``; a row with a ``query``
  column set to a true value becomes a query whose right answer is the item of the same label;
* a folder (or zip) of images alone: one item per image, labelled by its file name
  (``red_square.png`` -> "red square");
* a local MMEB-eval copy and one subset name: the subset's candidates become items, its rows
  queries (with the subset's instruction), so Failures and tours work on it.

A server folder is read in place (the manifest names its images by absolute path); a zip is
extracted into ``dest`` with the upload limits of :mod:`rge_demo.data.safezip`. Every image is
checked from its header (size, pixels) before it is accepted, never decoded here. Images inside
``dest`` are named relative to the gallery folder, so a cache folder that moves keeps working.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import warnings
from pathlib import Path

from PIL import Image

from rge_demo.errors import RGEUserError

from rge_demo.data.images import ImageError, check_size
from rge_demo.data.items import MANIFEST, Gallery, Item, ManifestError, Query
from rge_demo.data.safezip import UploadLimits, extract_zip
from rge_demo.data.upload import control_token_in, holds_control_token

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
LABEL_FILES = ("labels.csv", "labels.jsonl")
DEFAULT_INSTRUCTION = "Represent the given image."
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


class GalleryError(RGEUserError, ValueError):
    """A gallery source that cannot be used; the message names the file, row or field."""


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise GalleryError("give the gallery a name (1-64 letters, digits, spaces, '.', '_' or '-')")
    if not NAME_RE.match(name):
        raise GalleryError(f"gallery name {name!r}: use 1-64 letters, digits, spaces, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def _label_of(path: Path) -> str:
    return re.sub(r"[_-]+", " ", path.stem).strip() or path.stem


def _check_image(path: Path, limits: UploadLimits) -> None:
    """Format and size from the header only (no pixel is decoded)."""
    try:
        with warnings.catch_warnings():  # PIL's bomb warning: the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        raise GalleryError(f"{path.name}: too many pixels (the limit is {limits.max_pixels:,})") from None
    except Exception as e:  # PIL raises many kinds for a broken header
        raise GalleryError(f"{path.name}: not a readable image ({type(e).__name__})") from None
    try:
        check_size((w, h), path.name, limits.max_pixels)
    except ImageError as e:
        raise GalleryError(str(e)) from None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _label_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig", errors="strict")
    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise GalleryError(f"{path.name} line {n}: not JSON ({e.msg})") from None
    if not rows:
        raise GalleryError(f"{path.name}: no rows")
    return rows


def _check_texts(gallery: Gallery) -> None:
    """Refuse a gallery whose item or query texts hold a control token: registered, it could not be
    searched, evaluated or projected (each would refuse the text, naming no row)."""
    for what, entries in (("item", gallery.items), ("query", gallery.queries)):
        for e in entries:
            for field in ("text", "instruction"):
                if token := control_token_in(getattr(e, field, "") or ""):
                    raise GalleryError(f"{what} {e.id!r}: its {field} {holds_control_token(token)}")


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y", "query")


def _from_labels(folder: Path, labels: Path, name: str, limits: UploadLimits, instruction: str) -> Gallery:
    items, queries, seen = [], [], set()
    for n, row in enumerate(_label_rows(labels), 1):
        if not isinstance(row, dict):
            raise GalleryError(f"{labels.name} row {n}: expected an object with file and label")
        rel = str(row.get("file") or row.get("image") or "").strip()
        label = str(row.get("label") or "").strip()
        text = str(row.get("text") or "").strip()
        if not rel and not text:
            raise GalleryError(f"{labels.name} row {n}: needs a file (or image) or a text")
        if rel:
            path = (folder / rel).resolve()
            if folder.resolve() not in path.parents:
                raise GalleryError(f"{labels.name} row {n}: {rel!r} is outside the gallery folder")
            if not path.is_file():
                raise GalleryError(f"{labels.name} row {n}: image not found: {rel}")
            _check_image(path, limits)
        if len(text) > limits.max_text_chars:
            raise GalleryError(f"{labels.name} row {n}: text is over {limits.max_text_chars} characters")
        if token := control_token_in(text):
            raise GalleryError(f"{labels.name} row {n}: text {holds_control_token(token)}")
        image = str(path) if rel else None
        if _truthy(row.get("query", "")):
            queries.append((n, label, Query(id=f"q{n:05d}", instruction=instruction, text=text, image=image)))
            continue
        item_id = str(row.get("id") or f"{n:05d}")
        if item_id in seen:
            raise GalleryError(f"{labels.name} row {n}: duplicate id {item_id!r}")
        seen.add(item_id)
        items.append(Item(id=item_id, text=text, image=image, label=label or (Path(rel).stem if rel else text)))
    by_label = {}
    for it in items:
        by_label.setdefault(it.label, it.id)
    out = []
    for n, label, q in queries:
        if label and label not in by_label:
            raise GalleryError(f"{labels.name} row {n}: query label {label!r} matches no item")
        out.append(Query(**{**q.__dict__, "target_id": by_label.get(label, "")}))
    if not items:
        raise GalleryError(f"{labels.name}: every row is a query; a gallery needs items to search")
    return Gallery(name=name, root=folder, items=items, queries=out, candidate_instruction=instruction,
                   description=f"{len(items)} items from {labels.name}")


def _from_folder(folder: Path, name: str, limits: UploadLimits, instruction: str, shown: str | None = None) -> Gallery:
    """``shown``: what messages call the folder (an uploaded zip's name; default the folder's)."""
    shown = shown or folder.name
    if (folder / MANIFEST).exists() and not (folder / MANIFEST).is_file():
        raise GalleryError(f"{shown}: {MANIFEST} is a folder, not a file")
    if (folder / MANIFEST).is_file():
        try:
            g = Gallery.load(folder)
        except ManifestError as e:
            raise GalleryError(str(e).replace(str(folder), shown)) from None
        for rel in [it.image for it in g.items] + [q.image for q in g.queries]:
            if rel:
                path = (folder / rel).resolve()
                if folder.resolve() not in path.parents or not path.is_file():
                    raise GalleryError(f"{MANIFEST}: image {rel!r} is not a file inside the gallery folder")
                _check_image(path, limits)
        # absolute paths: the manifest written under dest still finds the images
        g.items = [Item(**{**it.__dict__, "image": str((folder / it.image).resolve()) if it.image else None})
                   for it in g.items]
        g.queries = [Query(**{**q.__dict__, "image": str((folder / q.image).resolve()) if q.image else None})
                     for q in g.queries]
        g.name = name
        return g
    labels = next((folder / f for f in LABEL_FILES if (folder / f).is_file()), None)
    if labels is not None:
        return _from_labels(folder, labels, name, limits, instruction)
    images = _images(folder)
    if not images:
        raise GalleryError(f"{shown}: no manifest.json, no labels.csv/labels.jsonl and no images "
                           f"({', '.join(IMAGE_SUFFIXES)})")
    if len(images) > limits.max_rows:
        raise GalleryError(f"{shown}: {len(images):,} images is over the limit of {limits.max_rows:,}")
    items = []
    for i, path in enumerate(images):
        _check_image(path, limits)
        items.append(Item(id=f"{i:05d}", image=str(path.resolve()), label=_label_of(path)))
    return Gallery(name=name, root=folder, items=items, candidate_instruction=instruction,
                   description=f"{len(items)} images labelled by file name")


def _from_mmeb(root: Path, subset: str, name: str, limit: int | None) -> Gallery:
    from rge_demo.analysis.eval_tasks import EvalDataError, load_mmeb

    try:
        (task,) = load_mmeb(root, [subset], limit=limit)
    except EvalDataError as e:
        raise GalleryError(str(e)) from None
    items = []
    for c in task.candidates:
        it = c.item
        items.append(Item(id=c.id, text=it.text, label=c.label or it.text[:60],
                          image=str(it.image_path) if it.image_path else None))
    queries = []
    for q in task.queries:
        target = task.candidates[q.candidate_index(task)]
        queries.append(Query(id=q.id, instruction=q.item.instruction, text=q.item.text, target_id=target.id,
                             image=str(q.item.image_path) if q.item.image_path else None,
                             task=subset, meta_task=task.meta_task))
    instruction = task.candidates[0].item.instruction if task.candidates else ""
    return Gallery(name=name, root=root, items=items, queries=queries, candidate_instruction=instruction,
                   meta_task=task.meta_task, description=f"MMEB-eval {subset}: {len(queries)} queries")


def _relative(image: str | None, root: Path) -> str | None:
    if image is None:
        return None
    path = Path(image)
    return path.relative_to(root).as_posix() if path.is_absolute() and root.resolve() in path.resolve().parents else image


def _single_root(folder: Path) -> Path:
    """A zip of one top-level folder: that folder (the layout most zip tools write)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def build_gallery(source: str | Path, name: str, dest: str | Path, *, kind: str = "auto",
                  subset: str | None = None, limit: int | None = None, limits: UploadLimits | None = None,
                  instruction: str = DEFAULT_INSTRUCTION) -> Gallery:
    """Read ``source`` (a folder, a ``.zip`` or, with ``kind="mmeb"``, an MMEB-eval folder and
    ``subset``) and write the gallery's manifest under ``dest/<name>``; returns the saved gallery.

    On any problem :class:`GalleryError` names it and nothing is left under ``dest/<name>``.
    """
    name = check_name(name)
    limits = limits or UploadLimits()
    source = Path(source)
    target = Path(dest) / name
    if target.exists():
        raise GalleryError(f"a gallery named {name!r} already exists: choose another name")
    if kind == "auto":
        kind = "zip" if source.suffix.lower() == ".zip" else "folder"
    if kind not in ("folder", "zip", "mmeb"):
        raise GalleryError(f"gallery source kind must be folder, zip or mmeb, got {kind!r}")
    if kind == "zip" and not source.is_file():
        raise GalleryError(f"{source.name}: no such zip file")
    if kind in ("folder", "mmeb") and not source.is_dir():
        raise GalleryError(f"{source}: no such folder")
    if kind == "mmeb" and not subset:
        raise GalleryError("an MMEB-eval gallery needs a subset name (e.g. ImageNet-1K)")
    target.mkdir(parents=True)
    try:
        if kind == "zip":
            extract_zip(source, target / "files", limits)
            gallery = _from_folder(_single_root(target / "files"), name, limits, instruction, shown=source.name)
        elif kind == "mmeb":
            gallery = _from_mmeb(source, subset, name, limit)
        else:
            gallery = _from_folder(source, name, limits, instruction)
        _check_texts(gallery)
        gallery.root = target
        gallery.items = [Item(**{**it.__dict__, "image": _relative(it.image, target)}) for it in gallery.items]
        gallery.queries = [Query(**{**q.__dict__, "image": _relative(q.image, target)}) for q in gallery.queries]
        gallery.save()
        return Gallery.load(target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
