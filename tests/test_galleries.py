"""Sample galleries: deterministic, one or more per meta-task, and the committed copy is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from rge_demo.data.galleries import DEFAULT_DIR, README, SAMPLES, make_sample_galleries
from rge_demo.data.items import META_TASKS, Gallery
from rge_demo.__main__ import main as cli_main


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("galleries")
    make_sample_galleries(out, seed=0)
    return out


def test_generation_is_deterministic(fresh, tmp_path):
    make_sample_galleries(tmp_path, seed=0)
    assert tree(tmp_path) == tree(fresh)


def test_regeneration_replaces_stale_files(fresh, tmp_path):
    make_sample_galleries(tmp_path, seed=0)
    (tmp_path / SAMPLES[0].name / "images" / "stale.png").write_bytes(b"x")
    make_sample_galleries(tmp_path, seed=0)
    assert tree(tmp_path) == tree(fresh)


def test_a_folder_that_is_not_a_gallery_stops_the_run_before_anything_is_written(fresh, tmp_path):
    make_sample_galleries(tmp_path, seed=0)
    before = tree(tmp_path)
    (tmp_path / SAMPLES[-1].name / "manifest.json").unlink()  # the last target is not a gallery any more
    before.pop(f"{SAMPLES[-1].name}/manifest.json")
    with pytest.raises(FileExistsError, match="exists and is not a gallery"):
        make_sample_galleries(tmp_path, seed=1)  # another seed: any gallery written would differ
    assert tree(tmp_path) == before
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="afile: is a file, not a folder"):
        make_sample_galleries(tmp_path / "afile")


def test_another_readme_stops_the_run_before_anything_is_written(tmp_path, capsys):
    """QA: ``make-galleries --out ""`` wrote into the working directory, the project's README.md replaced."""
    (tmp_path / README).write_text("# My project\n")
    with pytest.raises(FileExistsError, match="README.md: exists and is not the sample galleries' README"):
        make_sample_galleries(tmp_path, seed=0)
    assert tree(tmp_path) == {README: b"# My project\n"}
    assert cli_main(["make-galleries", "--out", str(tmp_path)]) == 2
    assert "not the sample galleries' README; not replacing it" in capsys.readouterr().err
    assert tree(tmp_path) == {README: b"# My project\n"}


def test_committed_galleries_match_a_fresh_generation(fresh):
    committed = tree(DEFAULT_DIR)
    assert committed, f"{DEFAULT_DIR} is missing: run python -m rge_demo make-galleries"
    generated = tree(fresh)
    assert sorted(committed) == sorted(generated)
    stale = [name for name in generated if committed[name] != generated[name]]
    assert not stale, f"committed sample galleries are out of date: {stale[:5]}"
    assert sum(map(len, committed.values())) < 2_000_000


def test_galleries_cover_every_meta_task_and_load(fresh):
    seen = set()
    for sample in SAMPLES:
        g = Gallery.load(fresh / sample.name)
        assert 16 <= len(g.queries) <= 24
        assert {q.split for q in g.queries} == {sample.split}
        assert all(q.target_id and q.rationale for q in g.queries)
        assert all("instruction" in it.meta for it in g.items)
        for rel in [q.image for q in g.queries] + [it.image for it in g.items]:
            assert rel is None or (g.root / rel).is_file()
        seen.add(g.meta_task)
    assert set(META_TASKS) <= seen
    text = (fresh / README).read_text()
    assert all(f"`{s.name}`" in text for s in SAMPLES)


def test_cli(tmp_path, capsys):
    assert cli_main(["make-galleries", "--out", str(tmp_path), "--seed", "1"]) == 0
    assert (tmp_path / README).is_file()
    assert "grounding" in capsys.readouterr().out
    (tmp_path / "not-a-gallery").mkdir()
    (tmp_path / SAMPLES[0].name / "manifest.json").unlink()
    assert cli_main(["make-galleries", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("record, message", [
    ({"id": "a", "text": 5}, r"items\[0\]\.text must be a string, got int"),
    ({"id": [1], "text": "x"}, r"items\[0\]\.id must be a string, got list"),
    ({"id": "a", "image": 3}, r"items\[0\]\.image must be a string or null, got int"),
    ({"id": "a", "text": "x", "meta": []}, r"items\[0\]\.meta must be an object, got list"),
])
def test_a_manifest_field_of_the_wrong_type_is_named(tmp_path, record, message):
    import json

    from rge_demo.data.items import ManifestError

    (tmp_path / "manifest.json").write_text(json.dumps({"name": "g", "items": [record]}))
    with pytest.raises(ManifestError, match=message):
        Gallery.load(tmp_path)
