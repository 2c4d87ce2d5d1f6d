"""A real browser clicks through every tab (plumbing and screenshots: tests/browser.py)."""

import json
import re

import pytest
from apprunner import REPO
from browser import SHOTS, choose, expect, tab, visible

from bench.map import point_xy

pytestmark = pytest.mark.slow  # the app in a subprocess and a browser


def test_compare_example_streams_and_ranks(page, app):
    with tab(page, app, "Compare", "1-compare"):
        page.get_by_text("Examples: click one to run it").scroll_into_view_if_needed()
        answers = page.locator(".table-wrap tr.tr-body td:last-child").all_inner_texts()
        assert len(answers) >= 4 and all(a.strip() for a in answers), answers  # QA: 8 of 10 were blank
        page.locator(".table-wrap tr.tr-body").first.click()  # one click fills the inputs and runs
        expect(page.locator("#rationale textarea")).not_to_have_value(re.compile(r"^\s*$"))
        expect(page.get_by_text("What moved")).to_be_visible()
        expect(page.get_by_text("writing the rationale")).to_have_count(0)
        expect(page.get_by_text("Direct (no reasoning)", exact=True)).to_be_visible()
        expect(page.get_by_text("Reasoning", exact=True)).to_be_visible()
        tables = visible(page, "table.rge-hits")
        expect(tables).to_have_count(2)  # both top-k lists
        first = json.loads((REPO / "assets" / "examples.json").read_text())[0]  # the example clicked
        n_items = len(json.loads((REPO / "sample_galleries" / first["gallery"] / "manifest.json").read_text())["items"])
        for i in range(2):
            expect(tables.nth(i).locator("tr")).to_have_count(1 + min(5, n_items))  # header + the top-5 hits
        expect(visible(page, ".rge-rank")).to_have_count(2)  # "right answer at rank N" on both sides
        expect(visible(page, ".rge-badge").first).to_be_visible()  # the What-moved badges
        expect(page.get_by_text("generated tokens")).to_be_visible()  # the cost line


def error_badges(page, selector):
    """Gradio's red "Error" status badges inside one component (the toast's title is elsewhere)."""
    return page.locator(selector).get_by_text("Error", exact=True)


def test_compare_error_marks_only_the_status_line(page, app):
    with tab(page, app, "Compare", "1b-compare-error"):
        target = page.get_by_label("Right answer (optional: marks its rank)", exact=True)
        target.fill("no-such-item")
        target.press("Enter")
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.get_by_text(re.compile("the right answer 'no-such-item' is not in gallery")).first).to_be_visible()
        expect(error_badges(page, "#compare-status")).to_have_count(1)
        expect(error_badges(page, "#rationale")).to_have_count(0)
        # the earlier example's result is gone: it would read as this refused query's (QA)
        expect(visible(page, "table.rge-hits")).to_have_count(0)
        expect(page.get_by_text("generated tokens")).to_have_count(0)
        target.fill("")
        target.press("Enter")
        # A message naming a control token shows it (the toast renders HTML: "<emb>" was swallowed as a tag).
        text = page.get_by_label("Query text", exact=True)
        before = text.input_value()
        text.fill("How many <emb> circles?")
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.get_by_text("the text contains '<emb>', one of the model's control tokens: remove it")
               .first).to_be_visible()
        text.fill(before)
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(visible(page, "table.rge-hits")).to_have_count(2)
        gallery = page.get_by_label("Gallery to search", exact=True)
        other = next(o for o in ("classification", "vqa-count") if o != gallery.input_value())
        choose(page, "Gallery to search", other)  # another gallery: the other one's top-k would mislead
        expect(visible(page, "table.rge-hits")).to_have_count(0)


def test_explore_map_click_lasso_colour_and_search(page, app):
    with tab(page, app, "Explore", "2-explore"):
        page.get_by_label("pca", exact=True).check()
        page.get_by_role("button", name="Project", exact=True).click()
        expect(page.get_by_text(re.compile(r"Method: PCA, \d+ points"))).to_be_visible()
        drawn = page.locator("#explore-map [data-points]")
        expect(drawn).to_have_count(1)
        n = int(drawn.get_attribute("data-points"))
        expect(page.locator("#explore-map .gl-container canvas").first).to_be_attached()  # WebGL scatter
        # the modebar has its tools but no upload to Plotly Cloud (the page makes no outside requests)
        expect(page.locator('#explore-map .modebar-btn[data-title="Box Select"]')).to_be_attached()
        expect(page.locator('#explore-map .modebar-btn[data-title="Share chart..."]')).to_have_count(0)
        expect(page.locator("#explore-map .scatterlayer .trace path.point").first).to_be_attached()  # arrow heads

        # hover shows the thumbnail, a click selects the point: the grid and the detail show it
        x, y = point_xy(page, n - 1)  # the last query's reasoning point
        page.mouse.move(x, y)
        expect(page.locator("#explore-map .rge-map-tip img")).to_be_visible()
        page.mouse.click(x, y)
        expect(page.locator("#explore-grid [data-point]")).to_have_count(1)
        expect(page.locator(f"#explore-grid [data-point='{n - 1}']")).to_contain_text("reasoning")
        expect(page.locator("#explore-detail")).to_contain_text("Nearest gallery items")
        expect(drawn).to_have_attribute("data-selected", str(n - 1))
        expect(page.locator("#explore-map .rge-ring")).to_have_count(1)  # the point is ringed on the map

        # a lasso around the whole plot selects every point
        box = page.locator("#explore-map .rge-map-plot .nsewdrag").first.bounding_box()
        page.mouse.move(box["x"] + 3, box["y"] + 3)
        page.mouse.down()
        for fx, fy in ((0.99, 0.01), (0.99, 0.99), (0.01, 0.99), (0.005, 0.02)):
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=6)
        page.mouse.up()
        expect(page.get_by_text(f"{n} points selected.")).to_be_visible()
        expect(page.locator("#explore-grid [data-point]")).to_have_count(min(n, 200))

        # the grid rings its point on the map
        page.locator("#explore-grid [data-point='0']").click()
        expect(drawn).to_have_attribute("data-selected", "0")

        # colour by another field: restyled, not re-projected (the status says so, the key follows)
        choose(page, "Colour by", "outcome")
        expect(page.get_by_text("Colour by outcome, size by none.")).to_be_visible()
        expect(page.locator("#explore-map .rge-map-key")).to_contain_text("wrong")
        expect(drawn).to_have_attribute("data-colour-by", "outcome")

        # search over labels, texts and rationales
        page.get_by_label("Search labels, texts and rationales").fill("square")
        page.get_by_label("Search labels, texts and rationales").press("Enter")
        expect(page.get_by_text(re.compile(r"\d+ points? match square"))).to_be_visible()
        page.locator("#explore-map").screenshot(path=str(SHOTS / "2b-explore-map.png"))
        page.get_by_label("Search labels, texts and rationales").fill("[(*")  # echoed as typed, not as markup
        page.get_by_label("Search labels, texts and rationales").press("Enter")
        expect(page.get_by_text(re.compile(r"points? match \[\(\*\.?$"))).to_be_visible()
        page.get_by_label("Search labels, texts and rationales").fill("")  # emptied: clears, no "0 points match ."
        page.get_by_label("Search labels, texts and rationales").press("Enter")
        expect(page.get_by_text("Search cleared: type words to ring the points that hold them.")).to_be_visible()

        # UMAP: either it is ready, or the app says it is warming up and shows PCA meanwhile.
        page.get_by_label("umap", exact=True).check()
        page.get_by_role("button", name="Project", exact=True).click()
        expect(page.get_by_text(re.compile(r"Method: UMAP|UMAP is .*PCA shown meanwhile"))).to_be_visible()


def test_failures_replay_line_follows_the_tour(page, app):
    with tab(page, app, "Failures", "3a-failures-replay"):
        replay = page.get_by_role("button", name="Replay this stop with the model in use (before / after)")
        replay.click()  # no tour open yet
        expect(page.get_by_text("open a tour first").first).to_be_visible()
        expect(error_badges(page, "#tour-replay")).to_have_count(1)
        tour = page.get_by_label("Tour", exact=True)
        tour.click()
        page.get_by_role("option").nth(0).click()
        expect(page.get_by_text(re.compile(r"Stop 1 of \d+"))).to_be_visible()
        expect(error_badges(page, "#tour-replay")).to_have_count(0)  # opening a tour clears the old error
        replay.click()
        expect(page.locator("#tour-replay").get_by_text("Stop 1. Rationale now")).to_be_visible()
        tour.click()
        page.get_by_role("option").nth(1).click()  # another tour: the old replay table goes
        expect(page.locator("#tour-replay").get_by_text("direct rank")).to_have_count(0)
        expect(page.get_by_text(re.compile(r"Stop 1 of \d+"))).to_be_visible()


def test_failures_tour(page, app):
    page.reload()  # no tour chosen yet (an earlier test of this module picked one)
    expect(page.get_by_text("Examples: click one to run it")).to_be_visible()
    with tab(page, app, "Failures", "3-failures-tour"):
        choose(page, "Saved evaluation run (reasoning + direct)", "rge-micro")
        page.get_by_role("button", name="Load run", exact=True).click()
        expect(page.get_by_text(re.compile(r"\d+ of \d+ cases shown"))).to_be_visible()
        page.get_by_role("button", name="Next", exact=True).click()  # no tour yet: it says so (QA: nothing)
        expect(page.get_by_text("Pick a tour in the Tour list first")).to_be_visible()
        tour = page.get_by_label("Tour", exact=True)
        tour.click()
        page.get_by_role("option").first.click()
        expect(page.get_by_text(re.compile(r"Stop 1 of \d+"))).to_be_visible()
        page.get_by_role("button", name="Next", exact=True).click()
        expect(page.get_by_text(re.compile(r"Stop 2 of \d+"))).to_be_visible()
        expect(page.get_by_text("Reasoning top-k")).to_be_visible()  # the stop's case is shown
        page.get_by_text(re.compile(r"Stop 2 of \d+")).scroll_into_view_if_needed()


def launch_and_finish(page, steps: int) -> None:
    """Press Launch and wait for the job's status line; it must have finished all ``steps``."""
    page.get_by_role("button", name="Launch", exact=True).click()
    done = page.get_by_text(re.compile(rf"^(finished|failed|cancelled) · step \d+ / {steps}"))
    expect(done).to_be_visible()
    line = done.inner_text()
    assert line.startswith(f"finished · step {steps} / {steps}"), \
        f"{line}\n{page.get_by_label('Log (last lines)').input_value()}"


def test_train_tab_sample_upload_to_curve(page, app, taught_dir):
    with tab(page, app, "Train", "4-train"):
        page.get_by_role("button", name="Try the sample upload").click()
        expect(page.get_by_text(re.compile(r"\b40 valid")).first).to_be_visible()
        page.get_by_role("button", name="Build dataset").click()
        # Each step's inputs are read when its button is clicked: wait for the previous step's output.
        expect(page.get_by_text(re.compile(r"40 pair\(s\) .*; [1-9]\d* without a rationale"))).to_be_visible()
        expect(page.get_by_label("templates", exact=True)).to_be_checked()
        page.get_by_role("button", name="Draft missing rationales").click()
        # The drafts table fills with template rationales ("the question is: ... answer <target>").
        expect(page.get_by_text(re.compile(r"^the question is")).locator("visible=true").first).to_be_visible()
        page.get_by_role("button", name="Save rationales into the dataset").click()
        expect(page.get_by_text(re.compile(r"40 pair\(s\) .*; 0 without a rationale"))).to_be_visible()

        # The app's own model: RGE_MODEL=<taught_dir> is registered under the folder's name.
        choose(page, "Base model (registry name, or a folder under RGE_MODEL_ROOTS)", taught_dir.name)
        page.get_by_label("Steps", exact=True).fill("4")
        page.get_by_label("Batch size", exact=True).fill("4")
        page.get_by_label("Max new tokens (rationale budget)", exact=True).fill("8")
        launch_and_finish(page, 4)
        expect(visible(page, ".js-plotly-plot .scatterlayer .trace").first).to_be_visible()  # the loss curve
        expect(visible(page, "table").filter(has_text="finished").first).to_be_visible()  # the Jobs table
        page.get_by_role("button", name="Before / after P@1 on the validation share").click()
        expect(visible(page, "table").filter(has_text="before").first).to_be_visible()
        page.get_by_role("button", name="Load in Compare (use in every tab)").click()
        expect(page.get_by_text(re.compile(r"job-\S+ is now the model in use"))).to_be_visible()
    with tab(page, app, "Models", "4a-models-follow"):
        # the picker follows the model in use (QA: it kept the old one, and Unload acted on that)
        expect(page.get_by_label(re.compile(r"^Model: registry name"))).to_have_value(re.compile(r"^job-"))
    assert app.alive()


def test_train_tab_eg_rl_job_draws_its_reward_curve(page, app, taught_dir):
    """After the test above (its dataset and base model stay chosen): the Embed-RL stage, live reward."""
    with tab(page, app, "Train", "4b-train-eg-rl"):
        page.get_by_label("eg-rl", exact=True).check()
        page.get_by_label("Steps", exact=True).fill("2")
        page.get_by_label("Batch size", exact=True).fill("2")
        launch_and_finish(page, 2)
        # the before / after table was the last job's: another job shown takes it off
        expect(visible(page, "table").filter(has_text="before")).to_have_count(0)
        curve = visible(page, ".js-plotly-plot").filter(has_text="retrieval_reward").first
        expect(curve).to_be_visible()  # reward, retrieval reward and KL beside the loss
        expect(curve.get_by_text("kl", exact=True)).to_be_visible()
    assert app.alive()


def test_a_gallery_zip_registered_in_the_galleries_tab_appears_in_compare(page, app, tmp_path):
    import zipfile

    from PIL import Image

    zpath = tmp_path / "my-colours.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for colour in ("red", "green", "blue", "yellow"):
            png = tmp_path / f"{colour}_square.png"
            Image.new("RGB", (40, 40), colour).save(png)
            z.write(png, png.name)
    with tab(page, app, "Galleries", "7-galleries"):
        page.locator("#gallery-zip input[type=file]").set_input_files(str(zpath))
        expect(page.locator("#gallery-zip").get_by_text("my-colours.zip")).to_be_visible()  # uploaded
        page.get_by_label("Gallery name (required)", exact=True).fill("my colours")
        page.get_by_role("button", name="Register and embed").click()
        expect(page.get_by_text(re.compile(r"Registered \*?\*?my colours"))).to_be_visible()
        # no queries: it is not offered for evaluation in Failures, and the message says so (QA)
        expect(page.get_by_text("gallery lists of Compare and Explore (not Failures: it has no queries")).to_be_visible()
        expect(page.get_by_test_id("cell-0-4")).to_contain_text("4/4")  # the background embedding ended: 4 of 4 items
        # A refused registration (the name is taken) takes the earlier success off the line its error marks
        page.get_by_role("button", name="Register and embed").click()
        expect(page.get_by_text("you already have a gallery named 'my colours'").first).to_be_visible()
        expect(page.get_by_text(re.compile(r"Registered \*?\*?my colours"))).to_have_count(0)
    with tab(page, app, "Compare", "8-compare-own-gallery"):  # no page reload needed (QA: it was)
        box = page.get_by_label("Gallery to search", exact=True)
        box.click()
        own = page.get_by_role("option", name=re.compile(r"^my colours \["))
        expect(own).to_be_visible()
        own.click()
        page.get_by_label("Query text", exact=True).fill("a red square")
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.get_by_text("What moved")).to_be_visible()
        expect(visible(page, "table.rge-hits")).to_have_count(2)
    with tab(page, app, "Explore", "8b-explore-own-gallery"):  # Explore's picker has it too, also unreloaded
        visible(page, "input[aria-label='Gallery']").first.click()  # Galleries' picker has the label too
        expect(page.get_by_role("option", name=re.compile(r"^my colours \["))).to_be_visible()
        page.keyboard.press("Escape")


def test_a_removed_gallery_leaves_the_failures_picker(page, app, tmp_path):
    """QA: Failures kept a removed gallery picked, and Evaluate then said "unknown gallery"."""
    import zipfile

    from PIL import Image

    zpath = tmp_path / "shapes.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        rows = ["file,label,query"]
        for colour in ("red", "green", "blue"):
            Image.new("RGB", (40, 40), colour).save(tmp_path / f"{colour}.png")
            z.write(tmp_path / f"{colour}.png", f"{colour}.png")
            rows.append(f"{colour}.png,{colour},")
        rows.append("red.png,red,yes")  # a query: the gallery can be evaluated in Failures
        z.writestr("labels.csv", "\n".join(rows) + "\n")
    picker = "Or a gallery: a sample one or yours (Galleries tab); its queries with a right answer are ranked " \
             "against its items"
    page.reload()  # an earlier test left its zip in the upload box
    expect(page.get_by_text("Examples: click one to run it")).to_be_visible()
    with tab(page, app, "Galleries", "9-galleries-remove"):
        page.locator("#gallery-zip input[type=file]").set_input_files(str(zpath))
        expect(page.locator("#gallery-zip").get_by_text("shapes.zip")).to_be_visible()
        page.get_by_label("Gallery name (required)", exact=True).fill("shapes")
        page.get_by_role("button", name="Register and embed").click()
        expect(page.get_by_text(re.compile(r"Registered \*?\*?shapes"))).to_be_visible()
        expect(page.get_by_label("Gallery", exact=True)).to_have_value(re.compile(r"^shapes \["))  # the new one
    with tab(page, app, "Failures", "9b-failures-pick"):
        page.get_by_text("Run a new evaluation with the model in use").click()
        box = page.get_by_label(picker, exact=True)
        box.click()
        page.get_by_role("option", name=re.compile(r"^shapes \[")).click()
        expect(box).to_have_value(re.compile(r"^shapes \["))
        name = box.input_value()
    with tab(page, app, "Galleries", "9c-galleries-removed"):
        choose(page, "Gallery", name)
        page.get_by_role("button", name="Remove", exact=True).click()
        expect(page.get_by_text(f"Removed {name}.")).to_be_visible()
        # the picker lets the removed gallery go (QA: it kept the name; Remove again said "no gallery named")
        expect(page.get_by_label("Gallery", exact=True)).to_have_value("")
    with tab(page, app, "Failures", "9d-failures-unpicked"):
        expect(page.get_by_label(picker, exact=True)).to_have_value("")
        # Evaluate with no gallery picked is refused; the red pill marks the status line above its text,
        # not over it (QA: it hid the words it sat on)
        page.get_by_role("button", name="Evaluate gallery (both modes)").click()
        pill = error_badges(page, "#failures-status")
        expect(pill).to_have_count(1)
        text = page.locator("#failures-status [data-testid=markdown] p").first.bounding_box()
        box = pill.bounding_box()
        assert box["y"] + box["height"] <= text["y"] + 1, (box, text)
