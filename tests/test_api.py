"""The app's API, end to end: the endpoint list the README documents, and endpoints that failed over
the API (`/reembed` without a comparison, `/replay_stop` beyond stop 1, `/evaluate` run names)."""

import re

import pytest
from gradio_client import Client, handle_file

from apprunner import REPO
from rge_demo.app.demo import SAMPLE_GALLERIES
from rge_demo.data.items import Gallery

pytestmark = pytest.mark.slow  # the app in a subprocess



def readme_endpoints() -> dict[str, list[str]]:
    """``{"/name": [parameter, ...]}`` from the README's API section (``- `/name(a, b)`: ...`` lines)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"^- `(/\w+)\(([^)]*)\)`", section, flags=re.M)
    return {name: [p.strip() for p in params.split(",") if p.strip()] for name, params in found}


def test_api_lists_exactly_the_readme_endpoints_with_named_parameters(client):
    info = client.view_api(return_format="dict", print_info=False)
    served = {name: [p["parameter_name"] for p in ep["parameters"]] for name, ep in info["named_endpoints"].items()}
    documented = readme_endpoints()
    assert len(documented) >= 20
    assert served == documented
    assert not info["unnamed_endpoints"]
    for name, params in served.items():  # no generated names left: /lambda*, /refresh_3, param_4
        assert not re.search(r"lambda|_\d+$", name), name
        assert not any(re.fullmatch(r"param_\d+", p) for p in params), (name, params)


def test_reembed_works_without_a_comparison_first(client):
    g = Gallery.load(SAMPLE_GALLERIES / "vqa-count")
    q = g.queries[0]
    img = handle_file(str(g.image_path(q.image)))
    fresh = Client(client.src, verbose=False)  # a session that never compared anything
    reason_html, moved = fresh.predict("vqa-count", img, q.text, q.instruction, q.target_id, 3,
                                       "the picture shows squares. answer two", api_name="/reembed")
    assert "your edited rationale" in reason_html and "right answer at rank" in reason_html
    assert reason_html.count("<tr") == 1 + 3 and "What moved" in moved
    # and after a comparison in the same session, against that comparison's direct side
    fresh.predict("vqa-count", img, q.text, q.instruction, q.target_id, 3, api_name="/compare")
    reason_html, _ = fresh.predict("vqa-count", img, q.text, q.instruction, q.target_id, 3, "answer two",
                                   api_name="/reembed")
    assert reason_html.count("<tr") == 1 + 3


def test_replay_stop_replays_the_stop_asked_for(client):
    first = client.predict("rge-micro-reasoning-helps", 1, api_name="/replay_stop")
    second = client.predict("rge-micro-reasoning-helps", 2, api_name="/replay_stop")
    assert "Stop 1." in first and "Stop 2." in second
    assert "direct rank" in second and "| now (" in second
    with pytest.raises(Exception, match=r"stop must be in 1\.\.\d+, got 99"):
        client.predict("rge-micro-reasoning-helps", 99, api_name="/replay_stop")


def test_evaluation_runs_are_named_for_their_tasks_and_never_overwrite(client):
    runs = []
    for _ in range(2):
        table, summary, _task_choices, run_choice = client.predict(
            ["count"], "ind", 2, "all", "all", "all", "all", "all", "", api_name="/evaluate")
        assert len(table["data"]) == 2
        name = re.search(r"Saved as run \*\*(.+?)\*\*", summary).group(1)
        assert run_choice["value"] == name
        runs.append(name)
    assert runs[0].endswith("-count-ind-2") and runs[1] == runs[0] + "-2"
    for name in runs:  # both are still there to load
        out = client.predict(name, "all", "all", "all", "all", "all", "", None, api_name="/load_run")
        assert len(out[0]["data"]) == 2
    # a long search is echoed cut, as Explore does (QA: 300 characters came back whole)
    _, summary, *_ = client.predict(runs[0], "all", "all", "all", "all", "all", "ö" * 300, None,
                                    api_name="/load_run")
    assert f"matching ` {'ö' * 79}… `" in summary and "ö" * 81 not in summary


def test_a_fresh_client_filters_a_run_by_task_in_its_first_call(app):
    """QA: the Task picker's choices come with a loaded run, so a new client's first filtered call was
    refused ("Task: Value: count is not in the list of choices: ['all']")."""
    fresh = Client(app.url, verbose=False)
    table, summary, *_ = fresh.predict("rge-micro", "all", "count", "all", "ood", "all", "", None,
                                       api_name="/load_run")
    assert table["data"] and re.match(r"\d+ of \d+ cases shown", summary)
