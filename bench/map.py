"""The Explore map at scale, in a real browser: time to first paint and a click's answer at N points.

A synthetic map (N points: 90 % gallery items, 5 % direct and 5 % reasoning queries with arrows,
random 2-D coordinates, seeded) is drawn by the Explore tab's own map component and services
(``rge_demo.ui.explore``, ``rge_demo.app.explore``) in a minimal Gradio app; headless chromium
(Debian's, driven by playwright) presses Draw and then clicks points, and the page is timed:

- first paint: from the Draw click to the map's ``data-points`` attribute (plotly has drawn it);
- restyle: colour by another field, from the change to the colour key showing it;
- click: from a mouse click on a hovered query point to the linked grid's answer (the round trip
  through the server: select event -> grid HTML), p50 over ``--clicks`` clicks; how many of them
  selected the point aimed at is counted too (at 100k an item often lies on top of it).

    OMP_NUM_THREADS=1 python -m bench.map [--n 100000] [--clicks 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import gradio as gr
import numpy as np

from rge_demo.analysis.projection import ProjectionResult
from rge_demo.app import explore as X
from rge_demo.ui import explore as ui

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


# the points the linked grid shows, as one string ("" while it shows none)
SHOWN_POINTS = ("() => [...document.querySelectorAll('#explore-grid [data-point]')]"
                ".map(e => e.dataset.point).join(',')")


def synthetic_map(n: int, seed: int = 0) -> X.Projection:
    rng = np.random.default_rng(seed)
    q = max(1, n // 20)
    items = n - 2 * q
    kinds = np.array(["item"] * items + ["query-direct"] * q + ["query-reason"] * q, dtype=object)
    coords = rng.normal(size=(n, 2)).astype(np.float32)
    labels = [f"label {i % 40}" for i in range(n)]
    points = [X.PointInfo("item", f"i{i}", labels[i], None, f"item {i}", None) for i in range(items)]
    for kind in ("query-direct", "query-reason"):
        for j in range(q):
            rank = int(rng.integers(1, 20))
            points.append(X.PointInfo(kind, f"q{j}", labels[j], None, f"query {j}", rank == 1, rank=rank,
                                      rank_change=int(rng.integers(-5, 6)), task="count", split="ind",
                                      tokens=int(rng.integers(5, 60)) if kind == "query-reason" else None))
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    return X.Projection(ProjectionResult(coords, kinds, "pca"), points, vectors, gallery="synthetic", model="none",
                        arrows=[(items + j, items + q + j) for j in range(q)])


def app(proj: X.Projection) -> gr.Blocks:
    payloads = X.Payloads()
    with gr.Blocks() as blocks:
        draw = gr.Button("Draw")
        colour = gr.Dropdown(list(X.COLOUR_FIELDS), value="label", label="Colour by")
        plot = ui.map_component(payloads)
        grid = gr.HTML(elem_id="explore-grid")
        draw.click(lambda: ui.map_update(payloads, proj, "label", "none"), None, plot)
        colour.change(lambda c: ui.style_update(payloads, proj, c, "none"), colour, plot)

        def on_select(evt: gr.SelectData):
            return ui._grid_html(X.grid(proj, X.check_points(proj, evt.index)), len(evt.index))

        plot.select(on_select, None, grid)
    return blocks


def point_xy(page, i: int) -> list[float]:
    """Page coordinates of map point ``i`` (plotly's axes: data -> pixels inside the plot div); the
    browser test uses it too."""
    return page.evaluate("""i => {
        const gd = document.querySelector('#explore-map .rge-map-plot'), L = gd._fullLayout;
        const k = gd.data.findIndex(t => t.customdata && t.customdata.includes(i));
        const j = gd.data[k].customdata.indexOf(i), r = gd.getBoundingClientRect();
        return [r.left + L.xaxis._offset + L.xaxis.d2p(gd.data[k].x[j]),
                r.top + L.yaxis._offset + L.yaxis.d2p(gd.data[k].y[j])];
    }""", i)


def measure(n: int, clicks: int, seed: int = 0) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout, expect, sync_playwright

    t0 = time.perf_counter()
    proj = synthetic_map(n, seed)
    payload_mb = len(json.dumps(X.payload(proj))) / 2**20
    style_mb = len(json.dumps(X.style(proj))) / 2**20
    server_s = time.perf_counter() - t0
    blocks = app(proj)
    _, url, _ = blocks.launch(prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--use-gl=swiftshader",
                                                                         "--enable-unsafe-swiftshader"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(300_000)
            page.goto(url)
            page.get_by_role("button", name="Draw").click()
            t = time.perf_counter()
            expect(page.locator("#explore-map [data-points]")).to_have_count(1, timeout=300_000)
            paint = time.perf_counter() - t
            page.get_by_label("Colour by").click()
            t = time.perf_counter()
            page.get_by_role("option", name="outcome", exact=True).click()
            expect(page.locator("#explore-map [data-colour-by='outcome']")).to_have_count(1, timeout=300_000)
            restyle = time.perf_counter() - t
            rng = np.random.default_rng(seed + 1)
            times, on_target = [], 0
            q0 = n - 2 * max(1, n // 20)  # click queries: items can hide under each other at 100k
            for i in rng.choice(np.arange(q0, n), size=clicks, replace=False):
                x, y = point_xy(page, int(i))
                page.mouse.move(x, y)  # plotly clicks what it hovers: wait for the hover first
                expect(page.locator("#explore-map .rge-map-tip")).to_be_visible(timeout=60_000)
                before = page.evaluate(SHOWN_POINTS)
                t = time.perf_counter()
                page.mouse.click(x, y)
                try:  # the grid answers with the point plotly picked (at 100k, often an item on top of it)
                    page.wait_for_function(f"b => {{ const now = ({SHOWN_POINTS})(); return now && now !== b; }}",
                                           arg=before, timeout=30_000)
                    times.append(time.perf_counter() - t)
                    on_target += page.locator(f"#explore-grid [data-point='{int(i)}']").count() > 0
                except PlaywrightTimeout:
                    times.append(float("nan"))
            browser.close()
    finally:
        blocks.close()
    ok = [s for s in times if s == s]
    return {"n": n, "payload_mb": round(payload_mb, 2), "style_mb": round(style_mb, 2),
            "server_build_s": round(server_s, 2), "first_paint_s": round(paint, 2), "restyle_s": round(restyle, 2),
            "click_p50_s": round(float(np.median(ok)), 3) if ok else None,
            "click_max_s": round(float(np.max(ok)), 3) if ok else None, "click_s": [round(t, 3) for t in times], "clicks_answered": len(ok),
            "clicks_on_the_aimed_point": on_target, "clicks": clicks}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="points on the map")
    p.add_argument("--clicks", type=int, default=10, help="points clicked (p50 of the answers)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print("error: chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    result = measure(args.n, args.clicks)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
