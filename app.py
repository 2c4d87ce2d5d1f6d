"""Start the RGE demo web app: ``python app.py [--host H] [--port P] [--model NAME] [--share]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from rge_demo.config import Settings  # noqa: E402
from rge_demo.app import explore  # noqa: E402
from rge_demo.app.demo import Demo  # noqa: E402
from rge_demo.ui.layout import PAGE_CSS, build_blocks  # noqa: E402

log = logging.getLogger("rge_demo.app")


def max_upload_bytes(settings: Settings) -> int:
    """Gradio's ``max_file_size`` in bytes: RGE_MAX_UPLOAD_MB mebibytes (Gradio's MB is 2**20 bytes)."""
    return int(settings.max_upload_mb * 1024 * 1024)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=env.host, help="bind address (RGE_HOST)")
    parser.add_argument("--port", type=int, default=env.port, help="port (RGE_PORT)")
    parser.add_argument("--model", default=env.model, help="model to load at start (RGE_MODEL)")
    parser.add_argument("--share", action="store_true", default=env.share, help="public share link (RGE_SHARE)")
    args = parser.parse_args()

    # The model's generate thread gives up the GIL in every torch op and must win it back from the web
    # server's threads; at Python's default 5 ms switch interval a busy event loop stalls it for up to
    # 5 ms per op. 1 ms cut Compare's latency by ~15 % alone and ~20 % with 4 users (bench/app.py).
    sys.setswitchinterval(0.001)
    # Gradio summarises every event it has recorded (up to 10,000, as a pandas table) when each event starts
    # and when it ends, for its /monitoring page. On an app that has been up a while that is ~8 ms of work
    # holding the GIL per compare, twice. Once per 1000 events is enough for a page nobody here opens.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    t0 = time.perf_counter()
    settings = Settings(**{**vars(env), "host": args.host, "port": args.port, "model": args.model, "share": args.share})
    demo = Demo(settings)
    log.info("loading %s and embedding the sample galleries", settings.model)
    demo.warm(progress=lambda name, done, total: log.info("gallery %s: %d/%d embedded", name, done, total))
    if settings.warm_maps:  # the Explore maps of the sample galleries, off the request path
        explore.warm_in_background(demo)
    blocks = build_blocks(demo)
    blocks.queue(default_concurrency_limit=1)
    log.info("ready in %.1f s", time.perf_counter() - t0)
    # Gradio refuses a larger upload while it streams in, before it is stored (RGE_MAX_UPLOAD_MB, in MiB).
    # No run history: Gradio would keep every call's inputs in the browser, the session key among them in
    # plain text (QA: anyone at that browser could read it in the "Runs" page and act as the session).
    blocks.launch(server_name=settings.host, server_port=settings.port, share=settings.share, show_error=True,
                  max_file_size=max_upload_bytes(settings), run_history=False, css=PAGE_CSS)


if __name__ == "__main__":
    main()
