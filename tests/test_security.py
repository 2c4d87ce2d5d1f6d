"""The running app under hostile or careless requests, driven with gradio_client like any API user:
another session's datasets and jobs, a decompression bomb, and bad inputs across the endpoints."""

import json
import re
import time

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image


from rge_demo.app.demo import SAMPLE_GALLERIES
from rge_demo.app.sessions import new_key
from rge_demo.app.workbench import DRAFT_COLUMNS
from rge_demo.data.items import Gallery

pytestmark = pytest.mark.slow  # the app in a subprocess

GALLERY = Gallery.load(SAMPLE_GALLERIES / "vqa-count")
QUERY = GALLERY.queries[0]
INSTRUCTION = QUERY.instruction
SERVER_PATH = re.compile(r"(?<![\w:/.])/(?:tmp|home|root|var|usr|work|proc|etc)/|[A-Za-z]:\\\\")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 12000x12000 PNG (~150 KB: one grey), a corrupt PNG, a text file named .png, an empty file."""
    root = tmp_path_factory.mktemp("hostile")
    bomb = root / "bomb.png"
    Image.new("L", (12000, 12000), 128).save(bomb, optimize=True)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.png").write_text("just some text")
    (root / "empty.png").write_bytes(b"")
    return root


def query_image():
    return handle_file(str(GALLERY.image_path(QUERY.image)))


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def refused(fn, *args, **kwargs) -> str:
    """The message of a call that must fail: a sentence naming the problem, nothing internal."""
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return check_sentence(str(info.value))


def check_sentence(message: str) -> str:
    assert len(message) >= 15 and " " in message, message
    for bad in ("internal error", "Traceback", "Could not preprocess", "Exception", "TypeError", "AttributeError",
                "KeyError", "UnidentifiedImageError", "NoneType"):
        assert bad not in message, message
    assert not SERVER_PATH.search(message), f"a server path in {message!r}"
    return message


def raw_call(app, endpoint: str, data: list) -> str:
    """One call over gradio's HTTP API with ``data`` as JSON (ASCII-escaped, so a lone surrogate
    travels as ``\\ud800``, which gradio_client cannot send): the error message, or "" on success."""
    r = httpx.post(f"{app.url}gradio_api/call{endpoint}", content=json.dumps({"data": data}),
                   headers={"content-type": "application/json"}, timeout=60)
    r.raise_for_status()
    event_id = r.json()["event_id"]
    with httpx.stream("GET", f"{app.url}gradio_api/call{endpoint}/{event_id}", timeout=120) as s:
        lines = list(s.iter_lines())
    for i, line in enumerate(lines):
        if line == "event: error":
            data = json.loads(lines[i + 1].removeprefix("data: ")) or ""
            return data.get("error", "") if isinstance(data, dict) else data
    return ""


# -- (a) sessions ---------------------------------------------------------------------------------
def test_another_sessions_datasets_and_jobs_are_refused(app, taught_dir):
    alice_key, bob_key = new_key(), new_key()
    alice, bob = Client(app.url, verbose=False), Client(app.url, verbose=False)
    upload = alice.predict(alice_key, api_name="/sample_upload")[0]
    dataset = alice.predict(alice_key, upload, False, api_name="/build_dataset")[0]["value"]
    assert upload and dataset

    # Bob validated nothing, then names Alice's upload and dataset: read and write both refused.
    bob.predict(bob_key, api_name="/sample_upload")
    for call in ((bob_key, upload, False, "/build_dataset"),
                 (bob_key, dataset, "templates", "/draft_rationales")):
        msg = refused(bob.predict, *call[:-1], api_name=call[-1])
        assert "another session" in msg, msg
    drafts = {"headers": DRAFT_COLUMNS, "data": [[0 if c == "row" else "x" for c in DRAFT_COLUMNS]]}
    msg = refused(bob.predict, bob_key, dataset, drafts, api_name="/save_rationales")
    assert "another session" in msg, msg
    msg = refused(bob.predict, bob_key, dataset, taught_dir.name, "baseline", 1, 2, 1e-4, 0.1, 1.0, 0.03, False, 4,
                  0.2, "", api_name="/launch_training")
    assert "another session" in msg, msg

    # Alice's job: Bob can neither see it nor act on it.
    job_pick, jobs, *_ = alice.predict(alice_key, dataset, taught_dir.name, "baseline", 1, 2, 1e-4, 0.1, 1.0, 0.03,
                                       False, 4, 0.2, "alice-job", api_name="/launch_training")
    job = job_pick["value"]
    try:
        for endpoint in ("/training_progress", "/cancel_training", "/resume_training", "/training_results",
                         "/use_trained_model"):
            msg = refused(bob.predict, bob_key, job, api_name=endpoint)
            assert "another session" in msg or "no job" in msg, (endpoint, msg)
        bob_jobs = bob.predict(bob_key, None, api_name="/training_progress")[0]
        assert job not in json.dumps(bob_jobs)
        # another session's key over a connection: a malformed key is refused with a sentence
        assert "session key" in refused(bob.predict, "short", job, api_name="/training_progress")
    finally:
        alice.predict(alice_key, job, api_name="/cancel_training")
    assert app.alive()


    # Gradio's run history would keep each call's inputs, the session key among them, in the browser
    config = httpx.get(f"{app.url}config", timeout=30).json()
    assert config["run_history"] is False and "runs" not in config.get("footer_links", ["runs"])


def test_another_sessions_gallery_is_refused(app, tmp_path):
    import zipfile

    alice_key, bob_key = new_key(), new_key()
    alice, bob = Client(app.url, verbose=False), Client(app.url, verbose=False)
    zpath = tmp_path / "colours.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for colour in ("red", "green", "blue"):
            png = tmp_path / f"{colour}_square.png"
            Image.new("RGB", (32, 32), colour).save(png)
            z.write(png, png.name)
    message, *_ = alice.predict("zip", handle_file(str(zpath)), "", "", None, "colours", alice_key,
                                api_name="/register_gallery")
    name = re.search(r"\*\*(.+?)\*\*", message).group(1)
    for _ in range(200):  # embedding runs in the background; a compare before it ends embeds what is left
        hits = alice.predict(name, "a red square", "Find the image.", 2, False, None, alice_key, api_name="/search")
        if hits["hits"]:
            break
    assert len(hits["hits"]) == 2
    for endpoint, args in (("/search", (name, "a red square", "Find the image.", 2, False, None, bob_key)),
                           ("/search", (name, "a red square", "Find the image.", 2, False, None, None)),
                           ("/remove_gallery", (name, bob_key))):
        msg = refused(bob.predict, *args, api_name=endpoint)
        assert "another session" in msg, (endpoint, msg)
    msg = refused(bob.predict, "folder", None, "/etc", "", None, "system", bob_key, api_name="/register_gallery")
    assert "folders on the server are off" in msg, msg
    assert "pick one of your galleries" in refused(alice.predict, None, alice_key, api_name="/remove_gallery")
    assert app.alive()


# -- (b) decompression bomb -----------------------------------------------------------------------
def test_a_12000x12000_png_is_refused_at_once_without_decoding(app, client, files):
    bomb = files / "bomb.png"
    assert bomb.stat().st_size < 300_000
    for endpoint in ("/search", "/compare"):
        img = handle_file(str(bomb))
        before = rss_mb(app.proc.pid)
        t0 = time.perf_counter()
        args = (("vqa-count", QUERY.text, INSTRUCTION, 3, False, img) if endpoint == "/search" else
                ("vqa-count", img, QUERY.text, INSTRUCTION, None, 3))
        with pytest.raises(Exception) as info:
            client.predict(*args, api_name=endpoint)
        seconds = time.perf_counter() - t0
        grown = rss_mb(app.proc.pid) - before
        assert seconds < 1.0, f"{endpoint}: refused after {seconds:.2f} s"
        assert grown < 100, f"{endpoint}: the server grew by {grown:.0f} MB"
        msg = check_sentence(str(info.value))
        assert "12000x12000" in msg and "bomb.png" in msg, msg
    assert app.alive()


# -- (c) bad inputs -------------------------------------------------------------------------------
def bad_inputs(files, taught_dir):
    """(endpoint, arguments, what the message must name) for 20+ distinct bad requests."""
    img, txt = query_image, QUERY.text
    big_k = 10 ** 9
    return [
        ("/compare", ("vqa-count", handle_file(str(files / "broken.png")), txt, INSTRUCTION, None, 3),
         r"broken\.png.*not an image"),
        ("/search", ("vqa-count", txt, INSTRUCTION, 3, False, handle_file(str(files / "broken.png"))),
         r"broken\.png.*not an image"),
        ("/search", ("vqa-count", txt, INSTRUCTION, 3, False, handle_file(str(files / "notes.png"))),
         r"notes\.png.*not an image"),
        ("/search", ("vqa-count", txt, INSTRUCTION, 3, False, handle_file(str(files / "empty.png"))),
         r"empty\.png.*empty file"),
        ("/search", ("vqa-count", "", "", 3, False, None), r"give an image or a text"),
        ("/search", ("no-such-gallery", txt, INSTRUCTION, 3, False, None), r"unknown gallery 'no-such-gallery'"),
        ("/search", ("vqa-count", txt, INSTRUCTION, 0, False, None), r"k must be in 1\.\.1000, got 0"),
        ("/search", ("vqa-count", txt, INSTRUCTION, -5, False, None), r"k must be in 1\.\.1000, got -5"),
        ("/search", ("vqa-count", txt, INSTRUCTION, big_k, False, None), r"k must be in 1\.\.1000"),
        ("/search", ("vqa-count", "x" * 2001, INSTRUCTION, 3, False, None), r"query text is 2001 characters"),
        ("/search", ("vqa-count", "two\x00three", INSTRUCTION, 3, False, None), r"query text contains a NUL"),
        ("/compare", ("vqa-count", img(), txt, INSTRUCTION, "no-such-item", 3),
         r"right answer 'no-such-item' is not in gallery"),
        ("/compare", ("vqa-count", None, "", "", None, 3), r"give an image or a text"),
        ("/compare", ("vqa-count", None, "how many <emb> here?", INSTRUCTION, None, 3),
         r"the text contains '&lt;emb&gt;', one of the model's control tokens"),  # the toast renders HTML
        ("/compare", ("vqa-count", img(), txt, INSTRUCTION, None, 50), r"^k: Value 50 is greater than maximum value 20"),
        # the slider's steps too (gradio checks only its range; the handler's "1..1000" named another range)
        ("/compare", ("vqa-count", img(), txt, INSTRUCTION, None, 2.5), r"^k: Value 2\.5 is not one of the slider's steps \(1, 2, \.\.\. 20\)"),
        ("/reembed", ("vqa-count", img(), txt, INSTRUCTION, None, 3, "   "), r"rationale is empty"),
        ("/reembed", ("vqa-count", img(), txt, "i" * 2001, None, 3, "answer two"), r"task instruction is 2001"),
        ("/project", ("no-such-gallery", "pca", "label", "none", None), r"no-such-gallery"),
        ("/project", ("vqa-count", "tsne", "label", "none", None), r"^Projection: Value: 'tsne' .*not in the list"),
        ("/compare", ("nope", img(), txt, INSTRUCTION, None, 3), r"^Gallery to search: Value: nope is not in the list"),
        ("/load_run", ("no-such-run", "all", "all", "all", "all", "all", "", None), r"no saved run 'no-such-run'"),
        ("/load_run", ("", "all", "all", "all", "all", "all", "", None), r"choose a saved run"),
        ("/load_run", ("rge-micro", "all", "nonsense", "all", "all", "all", "", None),
         r"task 'nonsense' is not in this run; its tasks: chart_diff, count, "),
        ("/evaluate", (["count"], "ind", 1000, "all", "all", "all", "all", "all", ""), r"^Queries per task and split: Value 1000 is greater than maximum value 100\."),
        ("/replay_stop", ("", 1), r"open a tour first"),
        ("/replay_stop", ("no-such-tour", 1), r"no tour 'no-such-tour'"),
        ("/replay_stop", ("rge-micro-reasoning-helps", 99), r"stop must be in 1\.\.\d+, got 99"),
        ("/validate_upload", (new_key(), None, None), r"nothing uploaded: give a manifest"),
        ("/build_dataset", (new_key(), "no-such-upload", False), r"no upload 'no-such-upload': validate an upload first"),
        ("/training_progress", (new_key(), "no-such-job"), r"no job 'no-such-job': choose one of your jobs"),
        ("/training_progress", ("bad key!", None), r"session key"),
        ("/unload_model", ("no-such-model", new_key()), r"no-such-model"),
        ("/load_model", ("no-model-here", "auto", "none", new_key()), r"no-model-here"),
    ]


def test_bad_inputs_get_one_sentence_naming_the_problem(app, client, files, taught_dir):
    cases = bad_inputs(files, taught_dir)
    assert len(cases) >= 20
    log_start = app.log_path.stat().st_size
    failures = []
    for endpoint, args, expect in cases:
        try:
            msg = refused(client.predict, *args, api_name=endpoint)
            if not re.search(expect, msg):
                failures.append(f"{endpoint} {args!r:.80}: {msg!r} does not name {expect!r}")
        except AssertionError as e:
            failures.append(f"{endpoint} {args!r:.80}: {e}")
    assert not failures, "\n".join(failures)
    assert app.alive()
    with open(app.log_path, encoding="utf-8") as log:  # a refusal is one line in the log, not a traceback
        log.seek(log_start)
        text = log.read()
    assert "Traceback" not in text
    assert "the text contains '<emb>'" in text and "&lt;" not in text  # the log is text: written as said


def test_lone_surrogates_and_k_above_the_gallery_size(app, client):
    # A lone surrogate (valid JSON, not valid Unicode text) in the query text, the instruction, a rationale.
    msg = raw_call(app, "/search", ["vqa-count", "How \ud800 many?", INSTRUCTION, 3, False, None, None])
    assert "query text contains a character that is not valid Unicode" in check_sentence(msg), msg
    msg = raw_call(app, "/search", ["vqa-count", "How many?", "Represent \udfff", 3, False, None, None])
    assert "task instruction contains a character that is not valid Unicode" in check_sentence(msg), msg
    msg = raw_call(app, "/reembed", ["vqa-count", None, "How many?", INSTRUCTION, None, 3, "answer \ud83d two", None])
    assert "rationale contains a character that is not valid Unicode" in check_sentence(msg), msg
    # k above the gallery size: every item, and the result says so
    out = client.predict("vqa-count", QUERY.text, INSTRUCTION, 50, False, None, api_name="/search")
    n = len(GALLERY.items)
    assert len(out["hits"]) == n and out["note"] == f"k=50 but the gallery has {n} items: showing {n}."
    small = Gallery.load(SAMPLE_GALLERIES / "classification")
    q = small.queries[0]
    *_, status = client.predict("classification", handle_file(str(small.image_path(q.image))) if q.image else None,
                                q.text, q.instruction, None, 5, api_name="/compare")
    assert status.startswith(f"k=5 but the gallery has {len(small.items)} items: showing {len(small.items)}.")
    assert app.alive()


def test_a_components_session_copy_keeps_the_apps_preprocessing(files):
    """QA: after a gallery switch (a handler returning gr.update() for the image), gradio rebuilt the
    session's image input from its constructor arguments, dropping the app's preprocessing: a text file
    named .png reached PIL and the page showed gradio's "Could not preprocess input component" message."""
    import gradio as gr
    from gradio.data_classes import ImageData

    from rge_demo.ui.common import image_input

    with gr.Blocks():
        image = image_input(label="Query image (optional)")
        slider = gr.Slider(2, 100, value=10, step=1, label="Queries per task and split")
    for component in (image, type(image)(**image.constructor_args)):  # as gradio copies it for a session
        assert component.preprocess(ImageData(path=str(files / "notes.png"))) == str(files / "notes.png")
    with pytest.raises(gr.Error, match="^'Queries per task and split: Value 1000 is greater than maximum value 100"):
        type(slider)(**slider.constructor_args).preprocess(1000)
    with pytest.raises(gr.Error, match=r"^.Queries per task and split: Value 10\.5 is not one of the slider's steps"):
        slider.preprocess(10.5)
    with gr.Blocks():
        share = gr.Slider(0.0, 0.9, value=0.2, step=0.05, label="Validation share")
    assert [share.preprocess(v) for v in (0.15, 0.35, 0.9)] == [0.15, 0.35, 0.9]  # on its steps, float error aside
    with pytest.raises(gr.Error, match="Validation share: Value 0.17 is not one of the slider's steps"):
        share.preprocess(0.17)
    with gr.Blocks():
        n = gr.Number(8, precision=0, label="Samples (N)")
    with pytest.raises(gr.Error, match=r"Samples \(N\): Value 1.5 is not a whole number"):
        n.preprocess(1.5)  # gradio rounded it to 2 unsaid
    assert n.preprocess(3.0) == 3 and n.preprocess(None) is None
    with gr.Blocks():
        plain = gr.Image(type="filepath")  # not the app's input: gradio's own preprocessing, unchanged
    with pytest.raises(Exception, match="cannot identify image file"):
        plain.preprocess(ImageData(path=str(files / "notes.png")))
