"""Upload safety and validation: every bad upload is a clear error row or UploadError, and nothing
is ever written outside the job folder."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from rge_demo.data.sample_upload import ZIP_NAME
from rge_demo.data.upload import (UploadError, UploadLimits, build_dataset, extract_zip, make_sample_upload,
                                  unpack_upload, validate)
from rge_demo.training.data import load_pairs

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "sample_upload"


def png(colour="red", size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture()
def dirs(tmp_path):
    inputs, job = tmp_path / "inputs", tmp_path / "job"
    inputs.mkdir()
    yield inputs, job
    # Whatever a test did, nothing may appear outside the job folder besides its inputs.
    outside = {p for p in files_under(tmp_path) if job not in p.parents and inputs not in p.parents}
    assert not outside, f"written outside the job folder: {outside}"
    assert not any("evil" in p.name for p in files_under(tmp_path.parent) if inputs not in p.parents)


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("entry, message", [
    ("../evil.png", "'..'"),
    ("images/../../evil.png", "'..'"),
    ("/tmp/evil.png", "absolute"),
    ("C:/evil.png", "absolute"),
    ("..\\evil.png", "backslash"),
    (symlink_entry("images/evil.png"), "symbolic link"),
    ("model.pkl", "pickled code"),
    ("weights.npy", "pickled code"),
    ("run.sh", "not accepted"),
])
def test_dangerous_entries_are_refused_before_anything_is_written(dirs, entry, message):
    inputs, job = dirs
    zpath = make_zip(inputs / "up.zip", [("images/ok.png", png()), (entry, b"/etc/passwd")])
    with pytest.raises(UploadError, match=message) as e:
        extract_zip(zpath, job / "x")
    name = entry.filename if isinstance(entry, zipfile.ZipInfo) else entry
    assert repr(name) in str(e.value)  # the message names the entry
    assert not files_under(job)  # the good entry was not extracted either
    assert not job.exists()  # nor a folder made for it


def test_zip_bomb_ratio_is_refused(dirs):
    inputs, job = dirs
    zpath = make_zip(inputs / "bomb.zip", [("images/bomb.png", b"\0" * (4 << 20))])
    with pytest.raises(UploadError, match="zip bomb"):
        extract_zip(zpath, job / "x")
    assert not job.exists()  # no file, no folder


def test_lying_header_is_caught_while_streaming(dirs):
    """The central directory says 10 bytes; the data holds 200 kB: extraction stops, nothing stays."""
    inputs, job = dirs
    zpath = make_zip(inputs / "liar.zip", [("a.txt", b"fine"), ("images/x.png", os.urandom(200_000))])
    raw = bytearray(zpath.read_bytes())
    at = raw.rindex(b"PK\x01\x02")  # the last central-directory record: images/x.png
    raw[at + 24:at + 28] = (10).to_bytes(4, "little")  # its uncompressed size
    zpath.write_bytes(bytes(raw))
    with pytest.raises(UploadError, match="images/x.png"):
        extract_zip(zpath, job / "x")
    assert not job.exists()  # no file, no folder


@pytest.mark.parametrize("limits, entries, message", [
    (UploadLimits(max_files=3), [(f"images/{i}.png", png()) for i in range(4)], "more than 3 files"),
    (UploadLimits(max_file_bytes=100), [("images/big.png", os.urandom(500))], "per-file limit"),
    (UploadLimits(max_total_bytes=700), [(f"images/{i}.png", os.urandom(300)) for i in range(3)], "total"),
])
def test_size_and_count_limits(dirs, limits, entries, message):
    inputs, job = dirs
    with pytest.raises(UploadError, match=message):
        extract_zip(make_zip(inputs / "z.zip", entries), job / "x", limits)
    assert not job.exists()


def test_not_a_zip(dirs):
    inputs, job = dirs
    (inputs / "z.zip").write_bytes(b"not a zip")
    with pytest.raises(UploadError, match="not a readable zip"):
        extract_zip(inputs / "z.zip", job / "x")
    assert not job.exists()


def test_a_folder_that_was_there_stays(dirs):
    inputs, job = dirs
    (job / "x" / "mine").mkdir(parents=True)
    with pytest.raises(UploadError, match="zip bomb"):
        extract_zip(make_zip(inputs / "z.zip", [("images/a.png", png()), ("images/b.png", b"\0" * (4 << 20))]),
                    job / "x")
    assert {p.relative_to(job).as_posix() for p in job.rglob("*")} == {"x", "x/mine"}


def test_a_file_and_a_folder_of_the_same_name_are_refused(dirs):
    inputs, job = dirs
    with pytest.raises(UploadError, match="has the name of its folder"):
        extract_zip(make_zip(inputs / "z.zip", [("a.png", png()), ("a.png/b.png", png())]), job / "x")
    assert not job.exists()


def test_a_refused_upload_leaves_no_upload_folder(dirs):
    """unpack_upload removes what it made when it refuses, midway too (the zip is checked, then read)."""
    inputs, job = dirs
    big = inputs / "pairs.jsonl"
    with open(big, "wb") as f:
        f.truncate(UploadLimits().max_file_bytes + 1)  # sparse
    with pytest.raises(UploadError, match=r"pairs.jsonl: manifest over 67,108,864 bytes"):
        unpack_upload(job, manifest=big)
    assert not job.exists()  # refused before a byte was copied
    archive = make_zip(inputs / "z.zip", [("images/a.png", png())])  # no manifest inside
    with pytest.raises(UploadError, match="no manifest found"):
        unpack_upload(job, archive=archive)
    assert not files_under(job) and not (job / "upload").exists()


# ----------------------------------------------------------------------------------- validation
def write_upload(root: Path, manifest: str | bytes, name="manifest.jsonl", images=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in (images or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    path = root / name
    path.write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    return path


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


GOOD = {"query_text": "how many?", "query_image": "images/a.png", "target_text": "two", "task": "count",
        "meta_task": "vqa", "rationale": "two shapes. answer two"}


def problems_of(report) -> list[tuple[int, str, str]]:
    return [(p.line, p.field, p.problem) for p in report.problems]


@pytest.mark.parametrize("row, field, message", [
    ({**GOOD, "query_image": "images/missing.png"}, "query_image", "image not found"),
    ({**GOOD, "query_image": "images/corrupt.png"}, "query_image", "corrupt|unreadable|not an image"),
    ({**GOOD, "query_image": "images/huge.png"}, "query_image", "decompression bomb"),
    ({**GOOD, "query_image": "../outside.png"}, "query_image", "relative inside"),
    ({**GOOD, "query_image": "images/model.pkl"}, "query_image", "not an image file type"),
    ({**GOOD, "colour": "red"}, "colour", "unknown column"),
    ({**GOOD, "query_text": "x" * 3000}, "query_text", "over the limit"),
    ({**GOOD, "target_text": 7}, "target_text", "must be a string"),
    ({**GOOD, "meta_task": "poetry"}, "meta_task", "unknown task kind"),
    ({"rationale": "answer two"}, "", "empty pair"),
    ({"query_text": "q"}, "target_text", "empty target side"),
])
def test_bad_rows_are_reported_with_line_and_field(tmp_path, row, field, message):
    images = {"images/a.png": png(), "images/corrupt.png": png()[:40] + b"garbage",
              "images/huge.png": png(size=(300, 300)), "images/model.pkl": b"\x80\x04."}
    path = write_upload(tmp_path / "up", jsonl(GOOD, row), images=images)
    report = validate(path, limits=UploadLimits(max_pixels=50_000))
    assert [(p.line, p.field) for p in report.problems] == [(2, field)]
    assert report.problems[0].problem and __import__("re").search(message, report.problems[0].problem)
    assert [r["line"] for r in report.ok_rows] == [1]
    assert list(report.to_dataframe().columns) == ["line", "field", "problem"]


def test_file_level_problems(tmp_path):
    cases = {
        "empty.jsonl": (b"", "empty file"),
        "blank.jsonl": (b"\n  \n", "empty file"),
        "latin1.csv": (b"query_text,target_text\ncaf\xe9,x\n", "byte 0xe9 at byte offset 26"),
        "nocols.csv": (b"query_text,rationale\nq,r\n", "missing required columns"),
        "notext.jsonl": (jsonl({"target_text": "t"}).encode(), "missing required columns"),
    }
    for name, (data, message) in cases.items():
        report = validate(write_upload(tmp_path / name.split(".")[0], data, name=name))
        assert not report.ok_rows and any(message in p.problem for p in report.problems), (name, problems_of(report))


def test_malformed_json_duplicate_and_csv(tmp_path):
    images = {"images/a.png": png()}
    report = validate(write_upload(tmp_path / "j", jsonl(GOOD, "{not json", GOOD, [1, 2]), images=images))
    assert problems_of(report)[0][:2] == (2, "") and "malformed JSON" in problems_of(report)[0][2]
    assert "duplicate pair" in problems_of(report)[1][2] and problems_of(report)[1][0] == 3
    assert "one JSON object" in problems_of(report)[2][2]
    assert report.n_rows == 4 and len(report.ok_rows) == 1
    assert "4 row(s), 1 valid, 3 problem(s)" in report.summary()

    csv_text = "query_text,query_image,target_text,meta_task,extra\nq1,images/a.png,t1,vqa,\nq2,,t2,retrieval,x,y\n"
    report = validate(write_upload(tmp_path / "c", csv_text, name="manifest.csv", images=images))
    assert (1, "extra") == problems_of(report)[0][:2]  # unknown column in the header
    assert problems_of(report)[1][:1] == (3,) and "more value" in problems_of(report)[1][2]
    assert [r["line"] for r in report.ok_rows] == [2] and report.task_counts == {"vqa": 1}

    # A quote left open swallows the lines after it into one value (QA: "Valid. 3 row(s), 3 valid").
    csv_text = ("query_text,target_text\nWhat barks?,dog\n\"unterminated quote,cat\nonly,one\n"
                "What moos?,cow\nWhat meows?,cat\n")
    report = validate(write_upload(tmp_path / "q", csv_text, name="manifest.csv"))
    assert problems_of(report) == [(3, "query_text", "a value runs over lines 3-6: a quote left open? Close it "
                                                     "(a text here is one line)")]
    assert [r["line"] for r in report.ok_rows] == [2]


def test_build_dataset_refuses_problems_unless_skipped(tmp_path):
    images = {"images/a.png": png(), "images/b.png": png("blue")}
    other = {**GOOD, "query_image": "images/b.png", "target_text": "one"}
    path = write_upload(tmp_path / "up", jsonl(GOOD, "{bad", other), images=images)
    report = validate(path)
    job = tmp_path / "job"
    with pytest.raises(UploadError, match=r"fix the file, or choose to skip the rows on line\(s\) \[2\]"):
        build_dataset(report, job)
    with pytest.raises(UploadError, match=r"^bad.jsonl: 1 problem\(s\)"):  # the name uploaded, not the stored one
        build_dataset(validate(path, name="bad.jsonl"), job)
    assert not job.exists()  # nothing written
    pairs_path = build_dataset(report, job, skip_bad=True)
    rows = [json.loads(line) for line in pairs_path.read_text().splitlines()]
    assert [r["target_text"] for r in rows] == ["two", "one"]
    assert {r["query_image"] for r in rows} == {"images/a.png", "images/b.png"}
    assert len(load_pairs(pairs_path)) == 2  # the trainer reads it


def test_sample_upload_is_current_and_validates_clean(tmp_path):
    made = make_sample_upload(tmp_path / "sample")
    assert made.read_bytes() == (ASSETS / ZIP_NAME).read_bytes(), "regenerate assets/sample_upload"
    assert (ASSETS / ZIP_NAME).stat().st_size < 300_000
    manifest, root = unpack_upload(tmp_path / "job", archive=ASSETS / ZIP_NAME)
    report = validate(manifest, root)
    assert report.ok, report.summary()
    assert report.task_counts == {"count": 20, "ground": 20}
    assert sum(bool(r.get("rationale")) for r in report.ok_rows) == 20
    assert len(load_pairs(build_dataset(report, tmp_path / "job"))) == 40


def test_separate_manifest_and_image_zip(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    manifest = write_upload(inputs, jsonl(GOOD), name="pairs.jsonl")
    archive = make_zip(inputs / "images.zip", [("photos/images/a.png", png())])
    path, root = unpack_upload(tmp_path / "job", manifest=manifest, archive=archive)
    assert root.name == "photos" and validate(path, root).ok


@pytest.mark.parametrize("layout, entries", [
    ("flat", [("a.png", png()), ("b.png", png("blue"))]),
    ("images/", [("images/a.png", png()), ("images/b.png", png("blue"))]),
    ("one top folder", [("myset/images/a.png", png()), ("myset/images/b.png", png("blue"))]),
    ("one top folder, flat", [("myset/a.png", png()), ("myset/b.png", png("blue"))]),
])
def test_a_manifest_plus_a_zip_of_the_images_it_names(tmp_path, layout, entries):
    """The README's layout: images/x.png in the manifest resolves whatever folder the zip puts them in."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    other = {**GOOD, "query_image": "images/b.png", "target_text": "one"}
    manifest = write_upload(inputs, jsonl(GOOD, other), name="manifest.jsonl")
    archive = make_zip(inputs / "images.zip", entries)
    path, root = unpack_upload(tmp_path / "job", manifest=manifest, archive=archive)
    report = validate(path, root)
    assert report.ok, (layout, problems_of(report))
    assert root.resolve().is_relative_to((tmp_path / "job").resolve())
    pairs = load_pairs(build_dataset(report, tmp_path / "job"))
    assert [p.query.image.getpixel((0, 0)) for p in pairs] == [(255, 0, 0), (0, 0, 255)]  # the right image per row


def test_a_zip_with_its_manifest_and_flat_images(tmp_path):
    """One zip: manifest.jsonl naming images/x.png, the images beside it without the folder."""
    archive = make_zip(tmp_path / "all.zip", [("manifest.jsonl", jsonl(GOOD).encode()), ("a.png", png())])
    path, root = unpack_upload(tmp_path / "job", archive=archive)
    assert validate(path, root).ok


# ------------------------------------------------------------------------------- control tokens
@pytest.mark.parametrize("field, text, token", [
    ("query_text", "a <emb> b", "<emb>"),
    ("target_text", "y <|image_pad|>", "<|image_pad|>"),
    ("rationale", "two shapes.<|im_end|> answer two", "<|im_end|>"),
    ("query_instruction", "<|vision_start|>Represent the image", "<|vision_start|>"),
    ("target_instruction", "Represent <|endoftext|> the answer", "<|endoftext|>"),
    ("query_text", "How many <|image_1|> shapes?", "<|image_1|>"),  # MMEB's placeholder: an image slot
])
def test_a_control_token_in_a_text_the_model_reads_makes_the_row_invalid(tmp_path, field, text, token):
    """QA: {"query_text": "a <emb> b", ...} was counted valid and trained on; now it is a problem row
    naming the field and the token, skipped or blocking the build like any other bad row."""
    images = {"images/a.png": png(), "images/b.png": png("blue")}
    bad = {**GOOD, "query_image": "images/b.png", field: text}
    report = validate(write_upload(tmp_path / "up", jsonl(GOOD, bad), images=images))
    assert [(p.line, p.field) for p in report.problems] == [(2, field)]
    problem = report.problems[0].problem
    assert f"{field} contains {token!r}, one of the model's control tokens" in problem and "remove it" in problem
    assert [r["line"] for r in report.ok_rows] == [1] and not report.ok
    with pytest.raises(UploadError, match=r"choose to skip the rows on line\(s\) \[2\]"):
        build_dataset(report, tmp_path / "job")
    pairs_path = build_dataset(report, tmp_path / "job", skip_bad=True)
    assert token not in pairs_path.read_text() and len(load_pairs(pairs_path)) == 1


def test_the_qa_manifest_with_emb_in_a_query_is_refused(tmp_path):
    report = validate(write_upload(tmp_path / "up", jsonl({"query_text": "a <emb> b", "target_text": "y"})))
    assert problems_of(report) == [(1, "query_text", "query_text contains '<emb>', one of the model's control "
                                                     "tokens (it would be read as that token, not as text): remove it")]
    assert not report.ok_rows
    with pytest.raises(UploadError, match="problem"):
        build_dataset(report, tmp_path / "job")


def test_uploads_refuse_the_same_control_tokens_as_compare(tiny):
    """The validator's list is the tokenizer's added tokens that the Encoder (Compare's check) refuses."""
    from rge_demo.data.upload import control_tokens
    from rge_demo.embedding.encoder import Encoder

    encoder = Encoder(*tiny)
    assert set(control_tokens()) == set(encoder._control)
    for token in control_tokens():
        with pytest.raises(ValueError, match="control tokens"):
            encoder.check_text(f"a {token} b", "text")


def test_every_control_token_is_named_in_the_order_the_text_has_them(tiny):
    """QA: "what is <emb> here <|image_pad|>" was refused naming only '<|image_pad|>'."""
    from rge_demo.data.upload import control_token_in
    from rge_demo.embedding.encoder import Encoder

    text = "what is <emb> here <|image_pad|>"
    assert control_token_in(text) == "<emb>"
    with pytest.raises(ValueError, match=r"^the text contains '<emb>' and '<\|image_pad\|>', the model's control "
                                         r"tokens: remove them$"):
        Encoder(*tiny).check_text(text, "text")
