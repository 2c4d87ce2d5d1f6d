"""App latency, measured like a user: start-up, first rationale token, full compares alone and with 4 users.

    python -m bench.app [--model rge-micro] [--runs 10] [--users 4] [--repeats 2] [--service]
                        [--client browser|gradio_client] [--model-process auto|on|off] [--start-up SECONDS]
                        [--batching continuous|merged] [--threads N] [--served N] [--profile FILE]

Starts ``python app.py`` twice (cold caches, then warm) on a free port and drives the Compare tab's
streaming endpoint. ``--start-up S`` first times one user's compares for S seconds after the warm
app serves, while the Explore maps warm up; the blocks below start once the maps are warm. In the
warm app, in the same run:

* one user: ``--runs`` compares one after another (seconds to the first streamed rationale text
  and to the finished comparison, direct + reasoning top-k);
* ``--users`` users at once: each its own session, all released together, each running ``--runs``
  compares back to back (no think time). Their requests meet in the encoder's request collector
  (``rge_demo.embedding.batcher``), which merges them into shared batches.

The client (``--client``): ``browser`` (the default) speaks Gradio's queue protocol as the page's
JavaScript does: upload the query image, join the queue, read the event stream as it arrives.
``gradio_client`` uses the Python client, which polls its message queue every 50 ms
(``gradio_client.utils.stream_sse_v1plus``): up to 50 ms more per message, at a random phase per
user, which is the client's cost, not the app's.

``--served N`` first has the warm app serve N light requests (Models-tab refreshes), so that the
blocks measure an app that has been up a while: Gradio keeps a record of every event it served.

The two blocks alternate ``--repeats`` times, so that both see the same load on a shared machine.
``--service`` runs the same blocks through the service layer in this process (no HTTP, no Gradio),
where the N-user block runs three ways: continuous (a request joins the running decode), merged
(requests waiting together run as one ``generate`` call) and merging off (the collector's ``max_rows``
set to 1: requests take turns on the model); it counts model calls per block. ``--batching`` sets the app's
``RGE_BATCHING`` (merged by default; continuous: a request joins the running decode at its next
step). The service blocks run both, whatever the setting. ``--threads`` sets the model's torch
threads (the app's ``OMP_NUM_THREADS``; default 1, so that a figure does not depend on what else
runs on the machine; the app itself takes every core when the variable is unset).

Prints p50 / p95 seconds per compare for both, and the 4-user p95 over the single-user median. Over
HTTP it also prints, per block, the app process's CPU time per compare and its CPU seconds per second
of wall time (``AppCPU``): about 1 means one core kept busy, the users' work done one piece after another.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
from gradio_client import Client, handle_file

from rge_demo.data.items import Gallery
from rge_demo.embedding.batcher import MAX_ROWS
from rge_demo.models.manager import default_specs
from rge_demo.app.demo import SAMPLE_GALLERIES
from tests.apprunner import RunningApp  # run from the repository root: python -m bench.app


class BrowserSession:
    """One page's session, speaking Gradio's queue protocol as its JavaScript client does.

    A compare: upload the query image (``/gradio_api/upload``), join the queue with the Compare
    button's inputs (``/gradio_api/queue/join``), then read ``/gradio_api/queue/data`` (server-sent
    events) until ``process_completed``.
    """

    def __init__(self, url: str, api_name: str = "compare"):
        self.http = httpx.Client(base_url=url, timeout=600)
        config = self.http.get("config").json()
        dep = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
        self.fn_index = dep["id"]
        self.session_hash = uuid.uuid4().hex
        self.phases: list[tuple[float, ...]] = []  # per compare: upload, join, join -> direct side, -> done

    def submit(self, *data) -> None:
        r = self.http.post("gradio_api/queue/join", json={
            "data": list(data), "fn_index": self.fn_index, "session_hash": self.session_hash,
            "event_data": None, "trigger_id": None})
        r.raise_for_status()

    def upload(self, path: Path) -> dict:
        with open(path, "rb") as f:
            server_path = self.http.post("gradio_api/upload", files={"files": f}).json()[0]
        return {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def messages(self):
        with self.http.stream("GET", "gradio_api/queue/data", params={"session_hash": self.session_hash}) as resp:
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    yield message
                    if message["msg"] == "process_completed":
                        if not message.get("success"):
                            raise RuntimeError(f"the app reported an error: {message.get('output')}")
                        return


def one_compare(client, gallery: Gallery, i: int) -> tuple[float, float]:
    """(seconds to the first rationale text, seconds to the finished comparison) for query ``i``."""
    q = gallery.queries[i % len(gallery.queries)]
    t0 = time.perf_counter()
    first = None
    if isinstance(client, BrowserSession):
        image = client.upload(gallery.image_path(q.image)) if q.image else None
        uploaded = time.perf_counter()
        client.submit(gallery.name, image, q.text, q.instruction, q.target_id, 5, None, None)  # model, session: state
        joined, direct = time.perf_counter(), None
        for m in client.messages():
            # the first update carries the direct side; the next ones the rationale (output 1) as it grows
            if direct is None and m["msg"] == "process_generating":
                direct = time.perf_counter()
            if first is None and m["msg"] == "process_generating" and m["output"]["data"][1]:
                first = time.perf_counter() - t0
        done = time.perf_counter()
        client.phases.append((uploaded - t0, joined - uploaded, (direct or done) - joined, done - (direct or done)))
        return first or float("nan"), done - t0
    image = handle_file(str(gallery.image_path(q.image))) if q.image else None
    job = client.submit(gallery.name, image, q.text, q.instruction, q.target_id, 5, api_name="/compare")
    for update in job:
        if first is None and update[1]:
            first = time.perf_counter() - t0
    job.result()  # raises if the app reported an error
    return first or float("nan"), time.perf_counter() - t0


def serve_light_requests(url: str, n: int) -> float:
    """``n`` Models-tab refreshes through the queue, one after another: the events an app that has been
    up for a while has served (Gradio keeps a record of each; see ``--served``). Returns the seconds."""
    session = BrowserSession(url, "model_status")
    t0 = time.perf_counter()
    for _ in range(n):
        session.submit(None, None)  # the model in use and the browser key: none
        for _ in session.messages():
            pass
    return time.perf_counter() - t0


class AppCPU:
    """The app process's CPU time (web server, handlers and model, all its threads) per block.

    A figure near 1 s of CPU per second of wall time means the app kept one core busy: with the model
    on one torch thread and Python's GIL shared by the server and the decode loop, its work for the
    users of a block then runs one piece after another, however many users wait.
    """

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.spent: dict[str, list[float]] = {}  # label: [CPU seconds, wall seconds]

    @contextlib.contextmanager
    def block(self, label: str):
        cpu, wall = self._cpu(), time.perf_counter()
        yield
        spent = self.spent.setdefault(label, [0.0, 0.0])
        spent[0] += self._cpu() - cpu
        spent[1] += time.perf_counter() - wall

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def report(self, compares: dict[str, int]) -> None:
        for label, (cpu, wall) in self.spent.items():
            print(f"{label}: the app's CPU {cpu * 1e3 / compares[label]:.1f} ms per compare, "
                  f"{cpu / wall:.2f} s of CPU per s of wall")


class GilProfile:
    """``--profile FILE``: py-spy records the app while the N-user blocks run, sampling only the thread
    that holds the GIL (``--gil``, 200 Hz), into FILE (raw stacks, one py-spy run per block appended).

    ``report`` prints the share of the samples per kind of thread: the collector (the model's calls:
    the decode loop's Python), the web server's event loop (uploads, the queue, the event stream), the
    handlers (Gradio's worker threads: the compares' own code) and the rest.
    """

    KINDS = (("rge-collector", "the collector (model calls)"), ("Thread-1 (run)", "the web server's event loop"),
             ("AnyIO worker thread", "the handlers"))

    def __init__(self, pid: int, out: Path):
        self.pid, self.out, self.spy = pid, out, self.find()
        out.write_text("")

    @staticmethod
    def find() -> str:
        """py-spy's path: on PATH or beside this Python (a venv's bin); SystemExit when neither."""
        beside = Path(sys.executable).parent / "py-spy"
        spy = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
        if spy is None:
            raise SystemExit("--profile needs py-spy (pip install py-spy)")
        return spy

    def __enter__(self):
        self.part = self.out.with_suffix(f".part{uuid.uuid4().hex[:6]}")
        self.proc = subprocess.Popen([self.spy, "record", "--pid", str(self.pid), "--gil", "--threads", "-r", "200",
                                      "-f", "raw", "-o", str(self.part)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        self.proc.wait(timeout=60)
        with open(self.out, "a") as f:
            f.write(self.part.read_text() if self.part.exists() else "")
        self.part.unlink(missing_ok=True)

    def report(self, label: str) -> None:
        counts: dict[str, int] = {}
        for line in self.out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            thread = stack.split(";", 1)[0]
            kind = next((name for key, name in self.KINDS if thread.endswith(key)), "other threads")
            counts[kind] = counts.get(kind, 0) + int(n)
        total = sum(counts.values())
        if not total:
            print(f"{label}: py-spy recorded no samples (is ptrace allowed?)")
            return
        shares = ", ".join(f"{name} {n / total:.0%}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        print(f"{label}: samples holding the GIL ({total}, {self.out}): {shares}")


def new_client(url: str, kind: str):
    return BrowserSession(url) if kind == "browser" else Client(url, verbose=False)


def concurrent_compares(clients: list, gallery: Gallery, runs: int) -> list[tuple[float, float]]:
    """The sessions released together, each ``runs`` compares back to back; every compare's times.

    The sessions are the same ones across blocks (users with the page open): a session's first
    request builds its server-side state (``gradio.state_holder.SessionState``: every component's
    config, ~0.2 s of the server's CPU here), which the warm-up round pays.
    """
    users = len(clients)
    barrier = threading.Barrier(users)
    times: list[list[tuple[float, float]]] = [[] for _ in range(users)]
    errors: list[BaseException] = []

    def session(u: int) -> None:
        barrier.wait()
        try:
            for r in range(runs):
                # the single-user block's queries, each user starting at another one
                times[u].append(one_compare(clients[u], gallery, 1 + (u + r) % runs))
        except BaseException as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=session, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [t for ts in times for t in ts]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def service_compare(demo, gallery: Gallery, i: int) -> tuple[float, float]:
    """One compare through the service layer (what the Compare tab calls), no HTTP."""
    q = gallery.queries[i % len(gallery.queries)]
    t0 = time.perf_counter()
    first = None
    for c in demo.compare(gallery.name, str(gallery.image_path(q.image)) if q.image else None, q.text,
                          q.instruction, 5, q.target_id):
        if first is None and c.rationale:
            first = time.perf_counter() - t0
    return first or float("nan"), time.perf_counter() - t0


def service_users(demo, gallery: Gallery, users: int, runs: int) -> list[tuple[float, float]]:
    barrier = threading.Barrier(users)
    times: list[list[tuple[float, float]]] = [[] for _ in range(users)]

    def session(u: int) -> None:
        barrier.wait()
        times[u] += [service_compare(demo, gallery, 1 + (u + r) % runs) for r in range(runs)]

    threads = [threading.Thread(target=session, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [t for ts in times for t in ts]


def run_service(args, model: Path, gallery: Gallery) -> dict[str, list[tuple[float, float]]]:
    """The same blocks through the service layer in this process: N users continuous, merged and with merging off."""
    from rge_demo.config import Settings
    from rge_demo.app.demo import Demo

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        demo = Demo(Settings(cache_dir=Path(cache), model=str(model), device="cpu",
                             max_new_tokens=args.max_new_tokens))
        demo.warm()
        collector = demo.model().encoder.collector
        service_compare(demo, gallery, 0)
        service_users(demo, gallery, args.users, 1)
        n = args.users
        blocks: dict[str, list] = {"1 user": [], f"{n} users, continuous": [], f"{n} users, merged": [],
                                   f"{n} users, merging off": []}
        calls = {label: [0, 0, 0] for label in blocks}  # [generate calls or decode loops, reasoning requests,
        # generate calls that continued from their compares' direct batch's prompt cache]
        default = collector.continuous  # RGE_BATCHING's choice, for the 1-user block
        for _ in range(args.repeats):
            for label in blocks:
                collector.max_rows = 1 if "off" in label else MAX_ROWS
                collector.continuous = "continuous" in label or (default and label == "1 user")
                before = collector.calls["generate"], collector.requests["reason"], collector.prefix_reused
                if label == "1 user":
                    blocks[label] += [service_compare(demo, gallery, i) for i in range(1, args.runs + 1)]
                else:
                    blocks[label] += service_users(demo, gallery, args.users, args.runs)
                calls[label][0] += collector.calls["generate"] - before[0]
                calls[label][1] += collector.requests["reason"] - before[1]
                calls[label][2] += collector.prefix_reused - before[2]
        collector.max_rows, collector.continuous = MAX_ROWS, default
    for label, (gen, req, shared) in calls.items():
        what = "decode loops" if "continuous" in label or (default and label == "1 user") else "generate calls"
        print(f"{label}: {req} reasoning requests in {gen} {what}" + (f", {shared} from the direct pass's prompt cache"
                                                                         if shared else ""))
    return blocks


def run_app(args, model: Path, gallery: Gallery) -> dict[str, list[tuple[float, float]]]:
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold caches", "warm caches"):
            app = RunningApp(model, Path(cache), max_new_tokens=args.max_new_tokens, timeout=600,
                             extra_env={"RGE_MODEL_PROCESS": args.model_process, "RGE_BATCHING": args.batching,
                                        "OMP_NUM_THREADS": str(args.threads)})
            print(f"start-up to serving ({label}): {app.ready_seconds:.1f} s")
            if label == "cold caches":
                app.stop()
                continue
            try:
                client = new_client(app.url, args.client)
                early = []  # --start-up: one user while the Explore maps warm up in the background
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < args.start_up:
                    early.append(one_compare(client, gallery, len(early)))
                # Then the steady state: once the Explore maps' warm-up (UMAP's JIT and one fit per sample
                # gallery, in a worker process) has ended.
                warm = app.wait_for_log("explore maps ready", "explore maps not precomputed")
                print(f"start-up to Explore maps warm: {warm:.1f} s")
                if args.served:
                    print(f"served {args.served} light requests first: "
                          f"{serve_light_requests(app.url, args.served):.1f} s")
                one_compare(client, gallery, 0)  # the first request pays one-off costs
                users = [new_client(app.url, args.client) for _ in range(args.users)]
                concurrent_compares(users, gallery, 1)  # warm-up round (the sessions' first requests), not counted
                blocks: dict[str, list] = {"1 user": [], f"{args.users} users": []}
                if early:
                    blocks[f"1 user, first {args.start_up:g} s"] = early
                for c in (client, *users):
                    if isinstance(c, BrowserSession):
                        c.phases.clear()  # the warm-up compares are not counted
                server = AppCPU(app.proc.pid)
                profile = GilProfile(app.proc.pid, Path(args.profile)) if args.profile else None
                for _ in range(args.repeats):
                    with server.block("1 user"):
                        blocks["1 user"] += [one_compare(client, gallery, i) for i in range(1, args.runs + 1)]
                    with profile or contextlib.nullcontext(), server.block(f"{args.users} users"):
                        blocks[f"{args.users} users"] += concurrent_compares(users, gallery, args.runs)
                server.report({label: len(times) for label, times in blocks.items()})
                if profile:
                    profile.report(f"{args.users} users")
                if args.client == "browser":  # where a compare's time goes, as the client sees it
                    for label, sessions in (("1 user", [client]), (f"{args.users} users", users)):
                        phases = list(zip(*[p for c in sessions for p in c.phases]))
                        print(f"{label}: median upload {statistics.median(phases[0]) * 1e3:.1f} ms, join "
                              f"{statistics.median(phases[1]) * 1e3:.1f} ms, join -> direct side "
                              f"{statistics.median(phases[2]) * 1e3:.1f} ms, direct side -> done "
                              f"{statistics.median(phases[3]) * 1e3:.1f} ms")
            finally:
                app.stop()
    return blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rge-micro")
    parser.add_argument("--runs", type=int, default=10, help="compares per user (default 10)")
    parser.add_argument("--users", type=int, default=4, help="concurrent sessions (default 4)")
    parser.add_argument("--gallery", default="vqa-count")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate the 1-user and the N-user blocks this many times (both see the same load)")
    parser.add_argument("--service", action="store_true",
                        help="call the service layer in this process instead of the app over HTTP (no Gradio "
                             "overhead); the N-user block runs continuous, merged and with merging off")
    parser.add_argument("--start-up", type=float, default=0.0, metavar="SECONDS",
                        help="first, one user's compares back to back for SECONDS after the app serves "
                             "(while the Explore maps warm up); default 0: none")
    parser.add_argument("--model-process", choices=("auto", "on", "off"), default="off",
                        help="the app's RGE_MODEL_PROCESS (default off; on: the model's calls in a child process)")
    parser.add_argument("--batching", choices=("merged", "continuous"), default="merged",
                        help="the app's RGE_BATCHING (default merged; continuous: requests join the running decode)")
    parser.add_argument("--threads", type=int, default=1, help="the model's torch threads (default 1)")
    parser.add_argument("--served", type=int, default=0, metavar="N",
                        help="app over HTTP: before the blocks, N light requests (Models-tab refreshes), as an app "
                             "that has been up a while has served (default 0)")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="app over HTTP: record the app with py-spy during the N-user blocks (GIL holders, "
                             "200 Hz) into FILE and print the share per kind of thread (needs py-spy; py-spy takes "
                             "CPU too, so this run's latencies are not comparable with others)")
    parser.add_argument("--client", choices=("browser", "gradio_client"), default="browser",
                        help="HTTP client: Gradio's queue protocol read as the page does (default), or gradio_client")
    args = parser.parse_args()
    if args.profile:
        if args.service:
            parser.error("--profile records the app over HTTP; it does not combine with --service")
        GilProfile.find()  # before the app starts
    specs = {s.name: s.source for s in default_specs()}
    model = Path(specs.get(args.model, args.model))
    gallery = Gallery.load(SAMPLE_GALLERIES / args.gallery)
    where = ("service layer, in process" if args.service
             else f"app over HTTP ({args.client} client, RGE_MODEL_PROCESS={args.model_process}, "
                  f"RGE_BATCHING={args.batching})")
    print(f"model {args.model} ({model}), gallery {args.gallery}, budget {args.max_new_tokens} tokens, {where}, "
          f"{args.threads} torch thread{'s' if args.threads > 1 else ''}")
    blocks = (run_service if args.service else run_app)(args, model, gallery)
    for label, times in blocks.items():
        full = [t[1] for t in times]
        print(f"{label + ':':<26} first rationale text median {statistics.median(t[0] for t in times):.3f} s | "
              f"full compare ({len(full)}) p50 {pct(full, 50):.3f} s, p95 {pct(full, 95):.3f} s, max {max(full):.3f} s")
    single = pct([t[1] for t in blocks["1 user"]], 50)
    for label, times in blocks.items():
        if "users" in label:
            print(f"{label}: p95 / 1-user median = {pct([t[1] for t in times], 95) / single:.2f}x (target <= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
