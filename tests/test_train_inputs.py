"""The Train tab in a real browser against QA's three reports: a control token in an upload, a second
Launch of a queued job, and Build after a failed validation (tests/browser.py: chromium + playwright)."""

from __future__ import annotations

import json
import re

from browser import choose, expect, tab

from rge_demo.training.worker import JobManager

QA_MANIFEST = [{"query_text": "a <emb> b", "target_text": "y"}, {"query_text": "a b", "target_text": "z"}]


def toast(page, pattern: str):
    return page.locator(".toast-body").filter(has_text=re.compile(pattern)).first


def test_train_tab_refuses_what_qa_found(page, app, taught_dir, tmp_path):
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in QA_MANIFEST))
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    upload_box = page.get_by_label("Upload", exact=True)
    try:
        with tab(page, app, "Train", "train-inputs"):
            # 1. A control token in a text: a problem row naming the field and the token.
            page.locator("#train-manifest input[type=file]").set_input_files(str(manifest))
            expect(page.locator("#train-manifest a[href$='/pairs.jsonl']")).to_be_visible()  # uploaded
            page.get_by_role("button", name="Validate upload").click()
            expect(page.get_by_text(re.compile(r"2 row\(s\), 1 valid, 1 problem\(s\)"))).to_be_visible()
            problem = page.get_by_text("query_text contains '<emb>', one of the model's control tokens")
            expect(problem.locator("visible=true").first).to_be_visible()  # in the Problems table
            page.get_by_role("button", name="Build dataset").click()
            expect(toast(page, r"choose to skip the rows on line\(s\) \[1\]")).to_be_visible()

            # 3. The sample upload built, then a corrupt zip fails validation: Build has no upload to build.
            page.get_by_role("button", name="Try the sample upload").click()
            expect(page.get_by_text(re.compile(r"\b40 valid")).first).to_be_visible()
            sample = upload_box.input_value()
            page.get_by_role("button", name="Build dataset").click()
            expect(page.get_by_text(re.compile(r"v1: 40 pair\(s\)"))).to_be_visible()
            page.locator("#train-zip input[type=file]").set_input_files(str(corrupt))  # beside the manifest above
            expect(page.locator("#train-zip a[href$='/corrupt.zip']")).to_be_visible()  # (its name shows as stem + suffix)
            page.get_by_role("button", name="Validate upload").click()
            expect(toast(page, "corrupt.zip")).to_be_visible()
            expect(upload_box).to_have_value("")
            page.get_by_role("button", name="Build dataset").click()
            expect(toast(page, "no upload yet")).to_be_visible()
            expect(page.get_by_text(f"{sample}/v2")).to_have_count(0)

            # 2. Launch twice: the second is refused, naming the first job.
            choose(page, "Base model (registry name, or a folder under RGE_MODEL_ROOTS)", taught_dir.name)
            page.get_by_label("baseline", exact=True).check()
            page.get_by_label("Steps", exact=True).fill("5000")
            page.get_by_label("Batch size", exact=True).fill("2")
            page.get_by_label("Job name (optional)", exact=True).fill("long")
            page.get_by_role("button", name="Launch", exact=True).click()
            expect(page.get_by_text(re.compile(r"^(queued|running) · step"))).to_be_visible()
            page.get_by_role("button", name="Launch", exact=True).click()
            expect(toast(page, r"job 'long' is already (queued|running) \(\d{8}-\d{6}-long-[0-9a-f]{6}\): cancel it")
                   ).to_be_visible()
            page.get_by_role("button", name="Cancel", exact=True).click()
            expect(page.get_by_text(re.compile(r"^cancelled · step"))).to_be_visible()  # its trainer has stopped
    finally:  # no trainer outlives the test (a worker runs on after its app stops)
        jobs = JobManager(app.log_path.parent / "jobs", background=False, max_running=0)
        for job in jobs.jobs():
            if job.status in ("queued", "running"):
                jobs.cancel(job.id)
    assert app.alive()
