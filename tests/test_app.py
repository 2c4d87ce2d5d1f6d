"""End to end: the app as a subprocess, driven by gradio_client like any API user."""

import re
import threading

import pytest
from gradio_client import Client, handle_file


from rge_demo.data.items import Gallery
from rge_demo.app.demo import SAMPLE_GALLERIES

pytestmark = pytest.mark.slow  # the app in a subprocess


@pytest.fixture(scope="module")
def app(taught_dir, tmp_path_factory):
    """The app on the taught model, streaming every rationale token (RGE_STREAM_INTERVAL=0)."""
    from apprunner import RunningApp

    running = RunningApp(taught_dir, tmp_path_factory.mktemp("test_app-cache"), extra_env={"RGE_STREAM_INTERVAL": "0"})
    yield running
    running.stop()


def query(name="vqa-count", i=0):
    g = Gallery.load(SAMPLE_GALLERIES / name)
    q = g.queries[i]
    return q, handle_file(str(g.image_path(q.image))) if q.image else None


def compare(client, name="vqa-count", i=0, image="default"):
    q, img = query(name, i)
    job = client.submit(name, img if image == "default" else image, q.text, q.instruction, q.target_id, 3,
                        api_name="/compare")
    return q, job


def test_compare_streams_and_marks_the_right_answer(client):
    q, job = compare(client)
    updates = list(job)
    assert len(updates) >= 2  # the direct result first, then the reasoning side
    direct_html, rationale, reason_html, moved, cost = job.outputs()[-1][:5]
    assert "Direct (no reasoning)" in direct_html and "right answer at rank" in direct_html
    # Mid-stream updates (one per token here) carry the rationale, not the finished direct column
    # again; the last update is whole, as an API caller reads it.
    middle = job.outputs()[1:-1]
    assert len(middle) >= 2 and all(u[1] for u in middle)
    assert not any(isinstance(u[0], str) for u in middle)
    assert "right answer at rank" in reason_html and "What moved" in moved
    assert rationale.strip() and "generated tokens" in cost


def test_search_endpoint(client):
    q, img = query()
    out = client.predict("vqa-count", q.text, q.instruction, 4, True, img, api_name="/search")
    assert len(out["hits"]) == 4 and out["rationale"]


def test_project_endpoint(client):
    fig, note, *_ = client.predict("classification", "pca", "outcome", "none", None, api_name="/project")
    assert "PCA" in note and fig is not None


def test_evaluate_endpoint(client):
    out = client.predict(["count"], "ind", 2, "all", "all", "all", "all", "all", "", api_name="/evaluate")
    table = out[0]
    assert len(table["data"]) == 2


def test_bad_image_gives_clear_error_and_app_keeps_serving(client, app, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    tracebacks = app.log_path.read_text(errors="replace").count("Traceback")
    q, job = compare(client, image=handle_file(str(bad)))
    with pytest.raises(Exception, match=r"'broken\.png': not an image") as e:
        job.result()
    assert "cannot identify" not in str(e.value) and "Traceback" not in str(e.value)  # not PIL's own error
    # The server log keeps one line for a refused request, not a traceback.
    app.wait_for_log("on_run refused: image 'broken.png': not an image", timeout=30)
    assert app.log_path.read_text(errors="replace").count("Traceback") == tracebacks
    assert app.alive()
    q, job = compare(client)
    assert job.result()[1].strip()


def test_two_sessions_get_their_own_results(app):
    results, errors = {}, []

    def run(name, i):
        try:
            c = Client(app.url, verbose=False)
            q, job = compare(c, name, i)
            results[name] = job.result()
        except Exception as e:  # a thread's exception would otherwise be printed and lost
            errors.append(e)

    threads = [threading.Thread(target=run, args=a) for a in (("vqa-count", 0), ("grounding", 1))]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    assert not errors and not any(t.is_alive() for t in threads), errors
    assert set(results) == {"vqa-count", "grounding"}
    for name, (direct_html, *_rest) in results.items():
        labels = {it.label or it.text for it in Gallery.load(SAMPLE_GALLERIES / name).items}
        shown = hit_labels(direct_html)
        assert len(shown) == 3 and set(shown) <= labels, (name, shown)


def hit_labels(html: str) -> list[str]:
    """The candidate labels of a rendered top-k table."""
    cells = re.findall(r"<tr(?: class=\"target\")?><td>=?\d+</td><td>(.*?)</td>", html)  # "=2": a tie
    return [re.sub(r"<small.*?</small>|<[^>]+>|&#10003; right answer", "", c).strip() for c in cells]
