"""UMAP fits in a worker process of their own: ``python -m rge_demo.analysis.umap_worker``.

numba's compiled code holds the GIL while it runs (the JIT at first use takes ~15 s, a fit
seconds). In the app's process that stalled every other request, Compare's included, for up to
~2.7 s at a time while the Explore maps warmed up (README, Benchmarks), so the app never runs UMAP
itself: :class:`UmapWorker` sends each fit to a child process over its stdin/stdout.

* The child is started with ``python -m`` (not multiprocessing's spawn, which would re-import the
  app's ``__main__`` and with it Gradio and torch): it imports numpy and umap-learn only.
* Protocol: one pickled ``(x, seed)`` in, one pickled ``(ok, coords or exception)`` out. The
  child's fd 1 is moved to stderr first, so a library's stray print cannot corrupt the stream.
* Lifetime: the child leaves when its stdin closes, i.e. when the app exits or is killed: no
  orphan. A child that died is replaced once per fit.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from rge_demo.errors import picklable

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds rge_demo/


class UmapWorkerDied(RuntimeError):
    """The worker process exited during a fit, twice."""


def fit(x: np.ndarray, seed: int) -> np.ndarray:
    """One 2-D UMAP fit of L2-normalised rows (cosine metric, seeded: deterministic)."""
    import umap  # heavy (numba)

    n = len(x)
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, n - 1)), metric="cosine",
                        random_state=seed, n_jobs=1, init="spectral" if n > 20 else "random")
    return np.asarray(reducer.fit_transform(x), dtype=np.float32)


class UmapWorker:
    """The app's side: one child process, one fit at a time, started at the first fit."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        return subprocess.Popen([sys.executable, "-m", "rge_demo.analysis.umap_worker"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def fit(self, x: np.ndarray, seed: int) -> np.ndarray:
        with self._lock:
            for attempt in (1, 2):
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                try:
                    pickle.dump((x, seed), self._proc.stdin)
                    self._proc.stdin.flush()
                    ok, value = pickle.load(self._proc.stdout)
                except (EOFError, OSError, pickle.UnpicklingError):
                    self._proc.kill()  # dead already, or alive with a broken stream
                    code = self._proc.wait(5)
                    self._proc = None
                    if attempt == 2:
                        raise UmapWorkerDied(f"the UMAP worker process exited during a fit (exit code {code})") from None
                    log.warning("the UMAP worker process exited (code %s); starting a new one", code)
                    continue
                if ok:
                    return value
                raise value

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.stdin.close()
                self._proc.wait(10)
                self._proc = None


def serve() -> None:
    """The child's loop: fits until stdin closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints go to stderr; fd 1's copy carries only the protocol
    inp = sys.stdin.buffer
    while True:
        try:
            x, seed = pickle.load(inp)
        except EOFError:
            return
        try:
            reply = (True, fit(x, seed))
        except Exception as e:  # noqa: BLE001 - the app gets it (an ImportError makes it use PCA)
            reply = (False, picklable(e))
        pickle.dump(reply, out)
        out.flush()


if __name__ == "__main__":
    serve()
