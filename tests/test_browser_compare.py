"""A real browser on the Compare tab's read-outs, sampling view and attribution (plumbing: tests/browser.py).

Screenshots: test-artifacts/screenshots/c*-compare-*.png.
"""

import re

import pytest
from browser import SHOTS, choose, expect, tab, visible

from rge_demo.app.demo import SAMPLE_GALLERIES
from rge_demo.data.items import Gallery

pytestmark = pytest.mark.slow  # the app in a subprocess and a browser

GALLERY = Gallery.load(SAMPLE_GALLERIES / "vqa-count")  # 10 items; count/three and chart_diff/three embed alike
QUERY = GALLERY.queries[0]
PICK = f"{QUERY.id}: {QUERY.text[:60]}"
TARGET_LABEL = "Right answer (optional: marks its rank)"


def compare(page, k: int):
    page.get_by_label("number input for k", exact=True).fill(str(k))
    page.get_by_label("number input for k", exact=True).press("Enter")
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(page.get_by_text("What moved")).to_be_visible()
    expect(page.get_by_text("writing the rationale")).to_have_count(0)


def last_ranked_unique(client) -> str:
    """The label of the direct ranking's lowest item among those whose label no other item has."""
    from gradio_client import handle_file

    img = handle_file(str(GALLERY.image_path(QUERY.image)))
    hits = client.predict(GALLERY.name, QUERY.text, QUERY.instruction, 10, False, img, api_name="/search")["hits"]
    labels = [h["label"] for h in hits]
    return next(label for label in reversed(labels) if labels.count(label) == 1)


def test_compare_shows_the_model_ties_rank_of_n_and_the_right_answer_below_the_top_k(page, app, client):
    with tab(page, app, "Compare", "c1-compare-ties-rank-of-n"):
        expect(page.locator("#prompt-profile")).to_contain_text(re.compile(r"Model: \S+ · prompt profile: micro"))
        choose(page, "Gallery to search", GALLERY.name)
        choose(page, "Pick a query from the gallery", PICK)
        expect(page.get_by_label("Query text", exact=True)).to_have_value(QUERY.text)
        # the task preset follows the picked query's task, and its instruction is the query's
        expect(page.get_by_label("Task preset (the loaded model's prompt profile)", exact=True)).to_have_value(QUERY.task)
        expect(page.get_by_label("Task instruction", exact=True)).to_have_value(QUERY.instruction)
        compare(page, 10)  # the whole gallery: both "three"s (and the other namesakes) tie
        tables = visible(page, "table.rge-hits")
        expect(tables).to_have_count(2)
        for i in range(2):
            expect(tables.nth(i).locator("tr")).to_have_count(1 + 10)
            expect(tables.nth(i).locator(".rge-tie").first).to_be_visible()
            expect(tables.nth(i).locator("td", has_text=re.compile(r"^=\d+$")).first).to_be_visible()
        ranks = visible(page, ".rge-rank")
        expect(ranks).to_have_count(2)
        for i in range(2):
            expect(ranks.nth(i)).to_have_text(re.compile(r"right answer at rank =?\d+ of 10"))
        expect(page.locator("#compare-status")).to_contain_text(re.compile(r"model \S+ \(profile micro\)"))
        # the rationale's note: the 8-token budget of the test app cuts it off, and the scene is known
        expect(visible(page, ".rge-note").first).to_be_visible()
        badges = [t.strip() for t in visible(page, ".rge-badge:not(.rge-same)").all_inner_texts()]
        assert len(badges) == len(set(badges)), badges  # one badge per moved item, namesakes told apart


def test_compare_shows_the_right_answer_outside_the_top_k(page, app, client):
    target = last_ranked_unique(client)
    with tab(page, app, "Compare", "c2-compare-right-answer-below"):
        choose(page, TARGET_LABEL, target)
        compare(page, 3)
        tables = visible(page, "table.rge-hits")
        for i in range(2):
            expect(tables.nth(i).locator("tr")).to_have_count(1 + 3)  # the top-3 only in the table
        below = visible(page, ".rge-offtop").first  # the direct side ranks it last of the gallery
        expect(below).to_contain_text(target)
        expect(below).to_contain_text("outside the top 3")
        direct_rank = visible(page, ".rge-rank").first
        expect(direct_rank).to_have_text(re.compile(r"right answer at rank =?([4-9]|10) of 10"))
        note = page.locator("#compare-status").inner_text()
        assert "generated tokens" in note
        page.locator("#rationale").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "c2-compare-right-answer-below-closeup.png"))


def test_sampling_view_samples_n_rationales_and_names_bad_input(page, app):
    with tab(page, app, "Compare", "c3-compare-sampling"):
        choose(page, TARGET_LABEL, "three (count)")  # namesakes carry their task
        page.get_by_label("Samples (N)", exact=True).fill("6")
        page.get_by_label("Temperature", exact=True).fill("1.5")
        page.get_by_role("button", name="Sample rationales", exact=True).click()
        expect(page.locator("#sample-status")).to_contain_text("Sampled 6 rationales")
        expect(page.locator("#sample-table table.rge-samples tr")).to_have_count(1 + 6 + 3)
        expect(page.locator("#sample-table")).to_contain_text("Spread (mean pairwise cosine)")
        expect(page.locator("#sample-table")).to_contain_text("pass@6")
        expect(page.locator("#sample-table")).to_contain_text("of 10")
        expect(visible(page, "#sample-plot .js-plotly-plot .scatterlayer .trace").first).to_be_visible()
        expect(page.locator("#sample-plot").get_by_text("centroid", exact=True).first).to_be_attached()
        page.locator("#sample-plot").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "c3-compare-sampling-closeup.png"))
        # a bad request: one sentence, the error badge on the sampling status line only
        page.get_by_label("Samples (N)", exact=True).fill("0")
        page.get_by_role("button", name="Sample rationales", exact=True).click()
        expect(page.get_by_text("the number of samples must be in 1..32, got 0").first).to_be_visible()
        expect(page.locator("#sample-status").get_by_text("Error", exact=True)).to_have_count(1)
        expect(page.locator("#compare-status").get_by_text("Error", exact=True)).to_have_count(0)
        expect(page.locator("#sample-table table.rge-samples")).to_have_count(0)  # not read as this one's
        page.get_by_label("Samples (N)", exact=True).fill("8")
        page.get_by_label("Temperature", exact=True).fill("1")
        for close in page.get_by_label("Close", exact=True).all():  # the toast would cover the next screenshot
            if close.is_visible():
                close.click()


def test_attribution_shades_the_rationale(page, app):
    with tab(page, app, "Compare", "c4-compare-attribution"):
        rationale = page.locator("#rationale textarea")
        rationale.fill("top left red circle, centre blue square. circles 1. answer three")
        page.get_by_role("button", name="Attribute the rationale (leave one part out)", exact=True).click()
        expect(page.locator("#attribute-status")).to_contain_text("Attributed 3 sentences and 4 clauses")
        box = page.locator("#attribution")
        expect(box.locator(".rge-part")).to_have_count(3 + 4)
        expect(box).to_contain_text("pulls towards the right answer")
        expect(box).to_contain_text("to the top wrong candidate")
        box.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "c4-compare-attribution-closeup.png"))


def test_embed_rl_panel_shows_a_reasoners_tcot_and_its_top_k(page, app, taught_dir):
    with tab(page, app, "Compare", "c5-compare-embed-rl"):
        page.get_by_text("Embed-RL: a Reasoner's T-CoT, embedded by the model in use").click()
        box = page.get_by_label("Reasoner model", exact=True)
        box.fill(str(taught_dir))  # the model in use as its own Reasoner: a pair that is plain RGE
        box.press("Enter")
        page.get_by_role("button", name="Reason with the Reasoner", exact=True).click()
        expect(page.locator("#tcot-status")).to_contain_text(re.compile(r"Reasoner .+ wrote \d+ tokens"))
        expect(page.locator("#tcot-hits")).to_contain_text("Embed-RL top-k")
        expect(page.locator("#tcot textarea")).not_to_have_value("")
        page.locator("#tcot-hits").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "c5-compare-embed-rl-closeup.png"))
        # a Reasoner with another tokenizer: one sentence, the badge on this panel's status line only
        box.fill("rge-micro")
        box.press("Enter")
        page.get_by_role("button", name="Reason with the Reasoner", exact=True).click()
        expect(page.get_by_text("must share one tokenizer").first).to_be_visible()
        expect(page.locator("#tcot-status").get_by_text("Error", exact=True)).to_have_count(1)
        expect(page.locator("#compare-status").get_by_text("Error", exact=True)).to_have_count(0)
        # the earlier Reasoner's T-CoT and top-k are gone: they would read as this one's (QA)
        expect(page.locator("#tcot-hits")).not_to_contain_text("Embed-RL top-k")
        expect(page.locator("#tcot textarea")).to_have_value("")
        for close in page.get_by_label("Close", exact=True).all():
            if close.is_visible():
                close.click()


def test_sample_and_attribute_endpoints(client, app):
    from gradio_client import handle_file

    img = handle_file(str(GALLERY.image_path(QUERY.image)))
    args = (GALLERY.name, img, QUERY.text, QUERY.instruction, QUERY.target_id)
    first = client.predict(*args, 4, 1.5, 7, None, api_name="/sample")[3]
    again = client.predict(*args, 4, 1.5, 7, None, api_name="/sample")[3]
    assert first == again  # the same seed, the same samples
    assert first["n"] == 4 and first["n_items"] == 10 and len(first["samples"]) == 4 and "pass_at" in first
    for n, temperature, message in ((0, 1.0, r"number of samples must be in 1\.\.32, got 0"),
                                    (4, 0, r"temperature must be above 0"),
                                    (10 ** 6, 1.0, r"number of samples must be in 1\.\.32")):
        with pytest.raises(Exception, match=message):
            client.predict(*args, n, temperature, 0, None, api_name="/sample")
    status, html, out = client.predict(*args, "circles 1. answer three", None, api_name="/attribute")
    assert "Attributed 2 sentences" in status and 'class="rge-part"' in html
    assert [s["text"] for s in out["sentences"]] == ["circles 1", "answer three"]
    assert app.alive()


def in_use(pg):
    """The Models tab's "In use in this session" line (written by the page's load event, then by each choice)."""
    pg.get_by_role("tab", name="Models", exact=True).click()
    return pg.locator("#models-status")


def test_the_model_in_use_outlives_a_page_reload_in_this_browser_only(page, app, taught_dir):
    """Galleries asks for a reload to list a new gallery; that reload used to drop the model chosen in Models."""
    default = f"In use in this session: {taught_dir.name}"  # the registry name, not the folder
    with tab(page, app, "Models", "c6-models-chosen"):
        choose(page, "Model: registry name or hub id (folders: off, RGE_MODEL_ROOTS)", "rge-micro")
        page.get_by_role("button", name="Load and use", exact=True).click()
        expect(page.locator("#models-status")).to_contain_text("In use in this session: rge-micro")
        page.wait_for_function("localStorage.getItem('rge-demo-model') !== null")  # the browser stored it
    page.reload()
    expect(page.locator("#prompt-profile")).to_contain_text("Model: rge-micro")  # Compare follows it too
    with tab(page, app, "Models", "c6-models-after-reload"):
        expect(in_use(page)).to_contain_text("In use in this session: rge-micro")
    other = page.context.browser.new_page()  # another browser: its own storage, so the app's default
    try:
        other.goto(app.url)
        expect(in_use(other)).to_contain_text(default)
    finally:
        other.close()
    stored = page.evaluate("localStorage.getItem('rge-demo-model')")
    choose(page, "Model: registry name or hub id (folders: off, RGE_MODEL_ROOTS)", taught_dir.name)
    page.get_by_role("button", name="Load and use", exact=True).click()  # back to the app's default, reload or not
    expect(page.locator("#models-status")).to_contain_text(default)
    page.wait_for_function("s => localStorage.getItem('rge-demo-model') !== s", arg=stored)
    page.reload()
    expect(in_use(page)).to_contain_text(default)
    expect(page.locator("#prompt-profile")).to_contain_text(f"Model: {taught_dir.name}")


def test_a_file_that_is_not_an_image_is_named_after_a_gallery_switch(page, app, tmp_path):
    """QA: switching gallery updates the image input, and gradio's copy of it then opened uploads with PIL:
    a text file named .png gave "Could not preprocess input component ..." instead of the app's sentence."""
    fake = tmp_path / "fake.png"
    fake.write_text("just some text")
    with tab(page, app, "Compare", "c7-compare-not-an-image"):
        choose(page, "Gallery to search", "classification")
        choose(page, "Gallery to search", "vqa-count")
        page.locator(".rge-image-input input[type=file]").first.set_input_files(str(fake))
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.get_by_text("image 'fake.png': not an image, or a format PIL cannot read").first).to_be_visible()
        expect(page.get_by_text("Could not preprocess")).to_have_count(0)
        for close in page.get_by_label("Close", exact=True).all():
            if close.is_visible():
                close.click()


def test_the_task_preset_follows_an_example_and_a_gallery_switch(page, app):
    """QA: the grounding example left the preset on majority_shape; switching to the classification
    gallery kept the count preset and its VQA instruction."""
    import json

    from apprunner import REPO

    examples = json.loads((REPO / "assets" / "examples.json").read_text())
    grounding = next(i for i, e in enumerate(examples) if e["gallery"] == "grounding")
    preset = page.get_by_label("Task preset (the loaded model's prompt profile)", exact=True)
    instruction = page.get_by_label("Task instruction", exact=True)
    with tab(page, app, "Compare", "c8-compare-presets"):
        page.get_by_text("Examples: click one to run it").scroll_into_view_if_needed()
        page.locator(".table-wrap tr.tr-body").nth(grounding).click()
        expect(preset).to_have_value("ground")
        expect(instruction).to_have_value("Represent the given image with the following request:")
        expect(page.get_by_text("writing the rationale")).to_have_count(0)
        choose(page, "Gallery to search", "classification")
        expect(preset).to_have_value("majority_shape")
        expect(instruction).to_have_value("Represent the given image for classification with the following question:")


def test_a_refused_load_reads_the_models_tables_again(page, app, client):
    """QA: after a refusal the tables stayed as they were (a model whose folder was deleted stayed "loaded");
    they are read again, here showing a model another session loaded meanwhile."""
    from rge_demo.app.sessions import new_key

    with tab(page, app, "Models", "c9-models-refused"):
        page.get_by_role("button", name="Refresh", exact=True).click()
        table = page.locator("table").filter(has_text="memory_mb").first  # Loaded models
        expect(table).not_to_contain_text("baseline-micro")
        client.predict("baseline-micro", "auto", "none", new_key(), api_name="/load_model")  # another session
        expect(table).not_to_contain_text("baseline-micro")  # this page has not asked yet
        box = page.get_by_label("Model: registry name or hub id (folders: off, RGE_MODEL_ROOTS)", exact=True)
        box.fill("no-such-model")
        box.press("Enter")
        page.get_by_role("button", name="Load and use", exact=True).click()
        expect(page.get_by_text("no-such-model: not a registered model").first).to_be_visible()
        expect(table).to_contain_text("baseline-micro")
