"""A user's own gallery from a folder, a zip, an image folder with labels, or a local MMEB-eval subset."""

import json
import os
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from rge_demo.analysis.failures import read_export
from rge_demo.app.user_galleries import GalleryError, build_gallery
from rge_demo.data.items import Gallery, Item, ManifestError
from rge_demo.embedding.gallery import build_index
from rge_demo.embedding.index import EmbeddingCache
from rge_demo.errors import RGEUserError
from tests.test_evaluate import make_mmeb

COLOURS = ("red", "green", "blue")


def image_folder(root, names=("red_square", "green-circle", "blue_cross")):
    root.mkdir(parents=True)
    for name, colour in zip(names, COLOURS):
        Image.new("RGB", (32, 32), colour).save(root / f"{name}.png")
    return root


def registered(demo, key, src, name):
    """``src`` zipped (flat), registered for ``key`` through the app layer, and embedded (waited for)."""
    import time

    zpath = src.parent / f"{name}.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in src.iterdir():
            z.write(f, f.name)
    g = demo.register_gallery(key, str(zpath), name, kind="zip")
    for _ in range(600):
        if next(r for r in demo.own_galleries(key) if r["name"] == g.name)["state"] != "embedding":
            break
        time.sleep(0.05)
    return g


def test_plain_image_folder_is_labelled_by_file_name_and_read_in_place(tmp_path):
    src = image_folder(tmp_path / "shapes")
    g = build_gallery(src, "my shapes", tmp_path / "galleries")
    assert [it.label for it in g.items] == ["blue cross", "green circle", "red square"]
    assert sorted(g.image_path(it.image) for it in g.items) == sorted(src.glob("*.png"))  # not copied
    again = Gallery.load(tmp_path / "galleries" / "my shapes")  # what the app reloads after a restart
    assert [it.id for it in again.items] == [it.id for it in g.items]


def test_labels_csv_gives_items_and_queries_with_their_right_answers(tmp_path):
    src = image_folder(tmp_path / "src")
    (src / "labels.csv").write_text("file,label,text,query\nred_square.png,red,,\ngreen-circle.png,green,,\n"
                                    "blue_cross.png,blue,,\n,green,a green one,yes\n")
    g = build_gallery(src, "labelled", tmp_path / "galleries")
    assert [it.label for it in g.items] == ["red", "green", "blue"]
    (q,) = g.queries
    assert q.text == "a green one" and g.items[g.index_of(q.target_id)].label == "green"


def test_zip_of_one_folder_is_extracted_and_named_relative(tmp_path):
    src = image_folder(tmp_path / "src")
    (src / "labels.jsonl").write_text("\n".join(json.dumps({"file": f.name, "label": f.stem})
                                                for f in sorted(src.glob("*.png"))) + "\n")
    zpath = tmp_path / "up.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in src.iterdir():
            z.write(f, f"top/{f.name}")
    g = build_gallery(zpath, "zipped", tmp_path / "galleries")
    assert len(g.items) == 3 and all(not it.image.startswith("/") for it in g.items)
    assert all(g.image_path(it.image).is_file() for it in g.items)


def test_a_zips_problems_name_the_zip_and_say_what_is_wrong(tmp_path):
    """Messages name the uploaded zip (not the folder it was extracted to), and an image the model
    cannot take is refused when the gallery is registered, not later while it embeds."""
    dest = tmp_path / "galleries"

    def zipped(name, files):
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            for arc, path in files.items():
                z.write(path, arc)
        return tmp_path / name

    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(GalleryError, match=r"^noimages.zip: no manifest.json, no labels"):
        build_gallery(zipped("noimages.zip", {"readme.txt": tmp_path / "readme.txt"}), "a", dest)
    Image.new("RGB", (4000, 10)).save(tmp_path / "strip.png")
    with pytest.raises(GalleryError, match=r"strip.png: 4000x10 is 400 times longer than wide; .* at most 200:1"):
        build_gallery(zipped("strip.zip", {"strip.png": tmp_path / "strip.png"}), "b", dest)
    Image.new("1", (15000, 15000)).save(tmp_path / "giant.png")  # over PIL's own bomb limit
    with pytest.raises(GalleryError, match=r"giant.png: too many pixels \(the limit is"):
        build_gallery(zipped("giant.zip", {"giant.png": tmp_path / "giant.png"}), "c", dest)
    assert not dest.exists() or not any(dest.iterdir())


def test_mmeb_subset_becomes_a_gallery_with_queries(tmp_path):
    root = make_mmeb(tmp_path / "MMEB-eval")
    g = build_gallery(root, "inet", tmp_path / "galleries", kind="mmeb", subset="ImageNet-A")
    assert sorted(it.label for it in g.items) == sorted(COLOURS)
    assert len(g.queries) == 3 and all(q.image and q.target_id for q in g.queries)
    assert [g.items[g.index_of(q.target_id)].label for q in g.queries] == list(COLOURS)
    with pytest.raises(GalleryError, match="subset"):
        build_gallery(root, "nope", tmp_path / "galleries", kind="mmeb", subset="Missing")


def test_bad_sources_are_sentences_and_leave_nothing(tmp_path):
    dest = tmp_path / "galleries"
    src = image_folder(tmp_path / "src")
    huge = src / "huge.png"
    Image.new("1", (12000, 12000)).save(huge)  # ~140 MP from a tiny file: refused from its header
    with pytest.raises(GalleryError, match=r"huge.png: 12000x12000 = 144,000,000 pixels exceeds the limit"):
        build_gallery(src, "bomb", dest)
    huge.unlink()
    (src / "notes.png").write_text("not an image")
    with pytest.raises(GalleryError, match="notes.png: not a readable image"):
        build_gallery(src, "broken", dest)
    (src / "notes.png").unlink()
    (src / "labels.csv").write_text("file,label\n../../etc/passwd,x\n")
    with pytest.raises(GalleryError, match="outside the gallery folder"):
        build_gallery(src, "escape", dest)
    with pytest.raises(GalleryError, match="gallery name"):
        build_gallery(src, "../x", dest)
    with pytest.raises(GalleryError, match=r"^give the gallery a name \(1-64 letters"):  # QA: "gallery name ''"
        build_gallery(src, "  ", dest)
    with pytest.raises(GalleryError, match="no such folder"):
        build_gallery(tmp_path / "missing", "gone", dest)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GalleryError, match="no manifest.json, no labels"):
        build_gallery(empty, "empty", dest)
    (empty / "manifest.json").mkdir()  # QA: a folder of that name was reported missing
    with pytest.raises(GalleryError, match="^empty: manifest.json is a folder, not a file$"):
        build_gallery(empty, "empty", dest)
    with pytest.raises(ManifestError, match="is a folder, not a file"):
        Gallery.load(empty)
    # A control token in a text (QA: registered, then every tab refused its query naming no row)
    (src / "labels.csv").write_text("file,label,text,query\nred_square.png,red,,\ngreen-circle.png,green,"
                                    "a cross <emb> token,yes\n")
    with pytest.raises(GalleryError, match=r"labels.csv row 2: text contains '<emb>', one of the model's control"):
        build_gallery(src, "tokens", dest)
    manifest_src = tmp_path / "manifest-src"
    Gallery(name="m", root=manifest_src, items=[Item(id="a", text="plain"), Item(id="b", text="x <|image_pad|> y")]).save()
    with pytest.raises(GalleryError, match=r"item 'b': its text contains '<\|image_pad\|>'"):
        build_gallery(manifest_src, "tokens2", dest)
    assert not dest.exists() or not any(dest.iterdir())
    (src / "labels.csv").unlink()
    build_gallery(src, "ok", dest)
    with pytest.raises(GalleryError, match="already exists"):
        build_gallery(src, "ok", dest)


def test_a_user_gallery_embeds_and_searches_on_the_real_model(tmp_path, taught_encoder):
    g = build_gallery(image_folder(tmp_path / "src"), "search me", tmp_path / "galleries")
    index = build_index(taught_encoder, g, "taught", EmbeddingCache(tmp_path / "cache"))
    assert index.matrix.shape[0] == 3
    hits = index.search(index.matrix[1:2], 1)[0]
    assert hits[0].item.id == g.items[1].id  # an item's own vector finds it first


def test_galleries_are_owned_by_their_session_and_survive_a_restart(tmp_path, taught_encoder):
    import time

    from rge_demo.app.gallery_access import GalleryAccess, GalleryNotFound
    from rge_demo.app.sessions import new_key
    from rge_demo.errors import OwnershipError

    shared = {"samples": Gallery(name="samples", root=tmp_path, items=[])}
    alice, bob = new_key(), new_key()
    access = GalleryAccess(tmp_path / "user-galleries", shared)
    src = image_folder(tmp_path / "src")
    mine = access.register(alice, src, "photos")
    theirs = access.register(bob, src, "photos")  # the same name in another session is another gallery
    assert mine.name != theirs.name
    assert access.names(alice) == ["samples", mine.name] and access.names(bob) == ["samples", theirs.name]
    assert access.get("samples", bob) is shared["samples"]  # sample galleries: everyone reads them
    with pytest.raises(OwnershipError, match="belongs to another session"):
        access.get(mine.name, bob)
    with pytest.raises(OwnershipError):
        access.remove(mine.name, bob)
    with pytest.raises(GalleryNotFound, match="no gallery named"):
        access.get("nothing", alice)
    with pytest.raises(RGEUserError, match="already have a gallery named 'photos'"):
        access.register(alice, src, "photos")

    seen = []
    index_box = {}

    def build(progress):
        index_box["index"] = build_index(taught_encoder, mine, "taught", EmbeddingCache(tmp_path / "cache"),
                                         progress=lambda done, total: (seen.append((done, total)), progress(done, total)))

    access.embed_in_background(mine.name, alice, build)
    for _ in range(300):
        if access.status(mine.name, alice)["state"] != "embedding":
            break
        time.sleep(0.05)
    assert access.status(mine.name, alice) == {"state": "ready", "done": 3, "total": 3, "error": ""}
    assert seen and seen[-1] == (3, 3) and index_box["index"].matrix.shape[0] == 3

    again = GalleryAccess(tmp_path / "user-galleries", shared)  # an app restart
    assert again.names(alice) == ["samples", mine.name]
    again.remove(mine.name, alice)
    assert again.names(alice) == ["samples"] and not mine.root.exists()


def test_a_gallery_removed_while_it_embeds_leaves_the_new_one_of_that_name_alone(tmp_path):
    """Remove a gallery mid-embedding and register one of the same name: the old embedding's thread
    ends without an error and never writes into the new gallery's status."""
    import threading

    from rge_demo.app.gallery_access import GalleryAccess
    from rge_demo.app.sessions import new_key

    errors = []
    hook, threading.excepthook = threading.excepthook, lambda a: errors.append(a.exc_value)
    try:
        access, key, src = GalleryAccess(tmp_path / "user-galleries", {}), new_key(), image_folder(tmp_path / "src")
        old = access.register(key, src, "photos", kind="folder")
        release_old, old_done, release_new = threading.Event(), threading.Event(), threading.Event()

        def old_build(progress):
            release_old.wait(30)
            progress(1, 3)
            try:
                raise FileNotFoundError("its folder was removed")
            finally:
                old_done.set()

        access.embed_in_background(old.name, key, old_build)
        access.remove(old.name, key)
        new = access.register(key, src, "photos", kind="folder")
        access.embed_in_background(new.name, key, lambda progress: release_new.wait(30))
        release_old.set()
        assert old_done.wait(30)
        threading.Event().wait(0.2)  # the old thread's last status update
        assert access.status(new.name, key) == {"state": "embedding", "done": 0, "total": 3, "error": ""}
        release_new.set()
    finally:
        threading.excepthook = hook
    assert errors == []


def test_registering_a_gallery_does_not_hold_up_other_sessions(tmp_path, monkeypatch):
    """The build (zip extraction, image checks) runs outside the lock every session's lookups take;
    the name stays reserved meanwhile."""
    import threading

    import rge_demo.app.gallery_access as module
    from rge_demo.app.gallery_access import GalleryAccess
    from rge_demo.app.sessions import new_key

    access, alice, bob, src = GalleryAccess(tmp_path / "ug", {}), new_key(), new_key(), image_folder(tmp_path / "src")
    access.register(bob, src, "bobs", kind="folder")
    building, release = threading.Event(), threading.Event()
    real = module.build_gallery

    def held(*args, **kwargs):
        building.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "build_gallery", held)
    t = threading.Thread(target=access.register, args=(alice, src, "mine"), kwargs={"kind": "folder"})
    t.start()
    assert building.wait(30)
    seen = []
    other = threading.Thread(target=lambda: seen.append(access.names(bob)))
    other.start()
    other.join(10)
    assert seen and any("bobs" in n for n in seen[0])
    with pytest.raises(RGEUserError, match="already have a gallery named 'mine'"):
        access.register(alice, src, "mine", kind="folder")  # reserved while it builds
    release.set()
    t.join(30)
    assert any(n.startswith("mine") for n in access.names(alice))


def test_the_app_layer_registers_embeds_and_compares_on_a_sessions_gallery(tmp_path, taught_dir):

    from rge_demo.app.demo import Demo
    from rge_demo.app.sessions import new_key
    from rge_demo.config import Settings
    from rge_demo.errors import FolderNotAllowed, OwnershipError

    src = image_folder(tmp_path / "src")
    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(taught_dir), max_new_tokens=4))
    alice, bob = new_key(), new_key()
    g = registered(demo, alice, src, "colours")
    (row,) = demo.own_galleries(alice)
    assert (row["name"], row["state"], row["done"], row["items"]) == (g.name, "ready", 3, 3)
    assert g.name in demo.gallery_names(alice) and g.name not in demo.gallery_names(bob)
    *_, c = demo.compare(g.name, None, "a red square", "Find the image.", 2, session_key=alice)
    assert c.done and len(c.reason.hits) == 2 and {h.item.id for h in c.direct.hits} <= {it.id for it in g.items}
    with pytest.raises(OwnershipError):
        next(demo.compare(g.name, None, "a red square", "Find the image.", 2, session_key=bob))
    with pytest.raises(FolderNotAllowed, match="folders on the server are off"):
        demo.register_gallery(alice, str(src), "on server", kind="folder")
    allowed = Demo(Settings(cache_dir=tmp_path / "cache2", model=str(taught_dir), gallery_roots=(tmp_path,)))
    assert allowed.register_gallery(alice, str(src), "on server", kind="folder").items
    with pytest.raises(FolderNotAllowed, match="not under a folder this app allows"):
        allowed.register_gallery(alice, "/etc", "system", kind="folder")
    demo.remove_gallery(g.name, alice)
    assert g.name not in demo.gallery_names(alice)


def test_a_sessions_gallery_is_evaluated_in_failures_and_its_run_is_the_sessions_alone(tmp_path, taught_dir):

    from rge_demo.app.demo import Demo
    from rge_demo.app.failure_runs import CaseNotFound, RunNotFound
    from rge_demo.app.sessions import new_key
    from rge_demo.config import Settings
    from rge_demo.errors import OwnershipError

    src = image_folder(tmp_path / "src")
    (src / "labels.csv").write_text("file,label,text,query\nred_square.png,red,,\ngreen-circle.png,green,,\n"
                                    "blue_cross.png,blue,,\n,green,a green one,yes\nred_square.png,red,,yes\n")
    settings = Settings(cache_dir=tmp_path / "cache", model=str(taught_dir), max_new_tokens=4)
    demo = Demo(settings)
    alice, bob = new_key(), new_key()
    g = registered(demo, alice, src, "labelled")
    seen = []
    name, cases = demo.failure_runs.evaluate_gallery(g.name, alice, progress=lambda m, d, t: seen.append((m, d, t)))
    assert re.fullmatch(rf"{re.escape(demo.model().name)}-gallery-labelled_\w+_-2", name)  # <model>-gallery-<g>-<n>
    assert len(cases) == 2 and {c.target_label for c in cases} == {"green", "red"}
    assert all(1 <= c.direct_rank <= 3 and 1 <= c.reason_rank <= 3 for c in cases)
    assert {m for m, *_ in seen} == {"direct", "reason"}
    image_case = next(c for c in cases if c.target_label == "red")
    assert Path(image_case.image).is_file() and "user-runs" in image_case.image  # copied into the run

    runs = demo.failure_runs
    assert name in runs.names(alice) and name not in runs.names(bob) and runs.is_own(name)
    with pytest.raises(OwnershipError, match="another session"):
        runs.load(name, bob)
    with pytest.raises(OwnershipError):
        demo.failure_runs.evaluate_gallery(g.name, bob)  # another session's gallery
    assert runs.case(name, image_case.query_id, alice).target_label == "red"
    with pytest.raises(CaseNotFound, match="has no case 'nope' \\(2 cases\\)"):
        runs.case(name, "nope", alice)
    with pytest.raises(RunNotFound, match="no saved run 'gone'"):
        runs.load("gone", alice)
    again, _ = runs.evaluate_gallery(g.name, alice)
    assert again == name + "-2"  # a new run never overwrites

    # Exports go under the cache's exports/ and sweep what is older than the retention time.
    stale = settings.cache_dir / "exports" / "export-stale"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    csv, parquet = runs.export(name, cases, alice)
    assert csv.parent.parent == settings.cache_dir / "exports" and parquet.is_file() and not stale.exists()
    assert len(read_export(csv)) == 2
    with pytest.raises(OwnershipError):
        runs.export(name, cases, bob)

    restarted = Demo(settings)  # an app restart finds the session's runs again, with their cases
    assert {name, again} <= set(restarted.failure_runs.names(alice))
    assert [c.query_id for c in restarted.failure_runs.load(name, alice)] == [c.query_id for c in cases]
    demo.remove_gallery(g.name, alice)  # the run keeps its own copies of the query images
    assert Path(restarted.failure_runs.case(name, image_case.query_id, alice).image).is_file()


def test_the_galleries_poll_leaves_a_pick_it_did_not_see_alone(tmp_path, taught_dir):
    """QA, under load: a registration picked the new gallery, then a poll sent before it arrived
    (its picker value still empty) unpicked it. A poll keeps a listed pick, drops a removed one and
    leaves the picker's value alone when it saw none."""
    import gradio as gr

    from rge_demo.app.demo import Demo
    from rge_demo.app.sessions import new_key
    from rge_demo.config import Settings
    from rge_demo.ui import galleries

    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(taught_dir), max_new_tokens=4))
    key = new_key()
    g = registered(demo, key, image_folder(tmp_path / "src"), "colours")
    with gr.Blocks():
        on_tick, _, _ = galleries.build(demo, gr.State(None), gr.BrowserState(key))
    _, kept, _ = on_tick(key, g.name, None)
    _, gone, _ = on_tick(key, "removed [0000]", None)
    _, unseen, _ = on_tick(key, "", None)
    assert kept["choices"] == unseen["choices"] == [g.name] and kept["value"] == g.name and gone["value"] is None
    assert "value" not in unseen
