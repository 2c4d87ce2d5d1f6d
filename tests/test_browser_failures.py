"""A real browser on the Failures tab: the case grid with thumbnails, search, a case opened by a click
and by its link, export, and the P@1 bars (plumbing: tests/browser.py).

Screenshots: test-artifacts/screenshots/f*-failures-*.png.
"""

import re

import pytest
from browser import SAVED_RUN, SHOTS, choose, expect, tab, visible

from rge_demo.analysis.failures import load_pair

pytestmark = pytest.mark.slow  # the app in a subprocess and a browser

RUN = "rge-micro"
CASES = load_pair(SAVED_RUN / "reason", SAVED_RUN / "direct")
GRID = "#failures-grid"


def cell(page, text):
    """The grid's visible cell showing exactly ``text``."""
    return page.locator(GRID).get_by_text(text, exact=True).locator("visible=true")


def test_grid_search_case_link_export_and_bars(page, app):
    with tab(page, app, "Failures", "f1-failures-grid"):
        # nothing shown yet, nothing to export (QA: it wrote the picker's whole run)
        page.get_by_role("button", name="Export the cases shown (CSV + Parquet)").click()
        expect(page.get_by_text("no run is loaded: load one (or evaluate) first").first).to_be_visible()
        expect(page.locator("#failures-export")).to_be_hidden()
        choose(page, "Saved evaluation run (reasoning + direct)", RUN)
        page.get_by_role("button", name="Load run", exact=True).click()
        expect(page.get_by_text(f"{len(CASES)} of {len(CASES)} cases shown")).to_be_visible()
        expect(visible(page, f"{GRID} img").first).to_be_visible()  # thumbnails in the grid
        box = visible(page, f"{GRID} img").first.bounding_box()
        assert box["width"] >= 40 and box["height"] >= 40, box
        header = visible(page, f"{GRID} thead").first.inner_text()
        assert "reasoning rank" in header and "reasonin g" not in header
        expect(page.locator("#failures-bars .js-plotly-plot")).to_be_visible()
        expect(page.locator("#failures-bars").get_by_text("P@1 per meta-task")).to_be_visible()

        # search: every word must appear; the grid and the count follow
        case = next(c for c in CASES if c.task == "count")
        search = page.get_by_label("Search query text, labels and rationales", exact=True)
        search.fill(f"{case.query_id}")
        search.press("Enter")
        expect(page.get_by_text(re.compile(r"^1 of \d+ cases shown matching"))).to_be_visible()
        expect(cell(page, case.query_id)).to_have_count(1)
        other = next(c for c in CASES if c.query_id != case.query_id)
        expect(cell(page, other.query_id)).to_have_count(0)

        # a click opens the case and gives its link
        cell(page, case.query_id).click()
        view = page.locator("#failures-case")
        expect(view.get_by_text("Reasoning top-k")).to_be_visible()
        expect(view.get_by_text(case.query_id)).to_be_visible()
        link = page.locator("#failures-link textarea, #failures-link input").first
        expect(link).to_have_value(re.compile(rf"\?run={RUN}&case="))
        url = link.input_value()

        # the case's rationale, shaded by each part's contribution
        page.get_by_role("button", name=re.compile(r"^Shade this case's rationale")).click()
        expect(page.locator("#failures-attribution").get_by_text("By sentence")).to_be_visible()
        expect(page.get_by_text(re.compile(rf"Case {re.escape(case.query_id)}: \d+ sentences"))).to_be_visible()

        # export: the rows shown, as CSV and Parquet
        page.get_by_role("button", name="Export the cases shown (CSV + Parquet)").click()
        files = page.locator("#failures-export")
        expect(files.get_by_text(re.compile(r"\.csv$"))).to_be_visible()
        expect(files.get_by_text(re.compile(r"\.parquet$"))).to_be_visible()
        page.locator("#failures-case").screenshot(path=str(SHOTS / "f2-failures-case.png"))
        # an export of nothing is refused and takes the earlier files off (QA: they stayed, as if its own)
        search.fill("zzz-no-such-case")
        search.press("Enter")
        page.get_by_role("button", name="Export the cases shown (CSV + Parquet)").click()
        expect(page.get_by_text("no case matches the filters: nothing to export").first).to_be_visible()
        expect(files.get_by_text(re.compile(r"\.csv$"))).to_have_count(0)
        search.fill(f"{case.query_id}")
        search.press("Enter")
        expect(page.get_by_text(re.compile(r"^1 of \d+ cases shown matching"))).to_be_visible()

        # the cost panel: every run as P@1 gain over direct vs generated tokens
        page.get_by_text("Cost: P@1 gain over direct vs generated tokens", exact=False).click()
        expect(page.locator("#failures-cost .js-plotly-plot")).to_be_visible()
        expect(page.locator("#failures-cost").get_by_text(RUN, exact=True).first).to_be_attached()
        page.locator("#failures-cost").screenshot(path=str(SHOTS / "f4-failures-cost.png"))

    # the link opens the app on that case in Failures, in a fresh page
    page.goto(url)
    expect(page.get_by_role("tab", name="Failures", exact=True)).to_have_attribute("aria-selected", "true")
    expect(page.get_by_text(f"Opened case {case.query_id} of run {RUN} from the link.", exact=False)).to_be_visible()
    expect(page.locator("#failures-case").get_by_text(case.query_id)).to_be_visible()
    expect(page.get_by_text(f"{len(CASES)} of {len(CASES)} cases shown")).to_be_visible()
    page.screenshot(path=str(SHOTS / "f3-failures-from-link.png"), full_page=True)

    # a link to a run that is not there: one sentence, and the tab still works
    page.goto(app.url.rstrip("/") + "/?run=no-such-run&case=x")
    expect(page.get_by_text("The link does not open a run: no saved run 'no-such-run'", exact=False)).to_be_visible()
    # markup in a link is shown as text, never rendered
    page.goto(app.url.rstrip("/") + f"/?run={RUN}&case=%3Cb%3Ebold%3C/b%3E%3Cimg%20src=x%3E")
    expect(page.get_by_text("The link does not open a case", exact=False)).to_be_visible()
    expect(page.get_by_text("<b>bold</b><img src=x>", exact=False)).to_be_visible()
    assert page.locator("#failures-status img, #failures-status b").count() == 0
    assert not page.errors, page.errors
