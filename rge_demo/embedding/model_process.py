"""The request collector's model calls in a process of their own.

In the app, the web server (Gradio's event loop, HTTP, streaming) and the model share one Python
process, so they share one GIL. A small model's ``generate`` is mostly Python per step (the
decoding loop, module calls, hooks), so every event the server handles delays the next decode
step; on this CPU that made four concurrent users' compares 2.4x slower than one user's, where
the same requests through the service layer alone once cost 1.8x (``bench/app.py``). Serving
stacks run the model apart from the web server; :class:`ModelProcess` does that for the collector.
Measured here it did not pay (README, Benchmarks): the 4-user latency is the merged batch's own
cost on this CPU, not the server's. It stays an option (``RGE_MODEL_PROCESS=on``): it also keeps
a crash or an out-of-memory kill of the model from taking the web server down.

* The child process (``spawn``) loads the same checkpoint (folder, device, dtype, quantization)
  and builds a plain :class:`~rge_demo.embedding.encoder.Encoder`. Rows are processed in the
  parent (the processor is cheap and its errors belong to the caller), sent over a pipe, and run
  with the encoder's own ``_vectors`` / ``_generate`` / ``_finish``: the same code, so the same
  vectors and rationales as in-process.
* Streaming: the child forwards each decode step's new tokens (B,); the parent feeds them to the
  merged call's :class:`~rge_demo.embedding.batcher.SplitStreamer`, so each user still gets their
  own rationale text as it grows.
* Errors: an exception in the child comes back to the caller (as itself when it pickles, else as
  a ``RuntimeError`` with its type and message). A child that dies (killed, out of memory) fails
  the call in flight with :class:`ModelProcessError`; the next call starts a new child.
* Memory: the child holds a second copy of the weights (the parent keeps its own for gallery
  embedding, attribution, sampling and training evaluation). That is a few MB for the micro
  models and the reason the setting's "auto" leaves it off on CUDA (``Settings.model_process``).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rge_demo.errors import picklable

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # loading a large checkpoint in the child


class ModelProcessError(RuntimeError):
    """The model's process failed to start or exited during a call."""


@dataclass(frozen=True)
class ChildSpec:
    """What the child needs to load the parent's model the same way."""

    folder: str
    device: str
    dtype: str
    quantization: str | None
    max_new_tokens: int
    threads: int


class _StepForwarder:
    """A ``generate`` streamer in the child: each step's new tokens go to the parent as a list."""

    def __init__(self, conn):
        self.conn, self.prompt_seen = conn, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate puts the prompt first: the parent's streamer skips it
            self.prompt_seen = True
            self.conn.send(("prompt", None))
            return
        self.conn.send(("step", value.reshape(-1).tolist()))

    def end(self) -> None:
        pass


def _serve(conn, spec: ChildSpec) -> None:
    """The child's loop: load, say ready, then run one call at a time until the pipe closes."""
    from rge_demo.embedding.encoder import Encoder
    from rge_demo.models.loading import load_checkpoint

    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        model, processor = load_checkpoint(Path(spec.folder), device=spec.device, dtype=spec.dtype,
                                           quantization=spec.quantization)
        enc = Encoder(model, processor, max_new_tokens=spec.max_new_tokens)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", picklable(e)))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        kind, rows, budget, stream = msg
        try:
            with torch.inference_mode():
                if kind == "direct":
                    payload = enc._vectors(rows)
                else:
                    generated, vectors = enc._reason(rows, budget, _StepForwarder(conn) if stream else None)
                    payload = ([(ids, forced, None) for ids, forced, _ in generated], vectors)
            conn.send(("done", payload))
        except Exception as e:  # noqa: BLE001 - the caller gets it
            conn.send(("error", picklable(e)))


class ModelProcess:
    """A child process that runs an encoder's model calls (one at a time: the collector's worker calls it)."""

    def __init__(self, spec: ChildSpec):
        self.spec = spec
        self._lock = threading.Lock()
        self._proc = None
        self._conn = None
        self._closed = False  # closed for good: the manager unloaded this model
        self.starts = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child and wait until its model is loaded (raises the child's load error)."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._closed:
            raise ModelProcessError(f"{self.spec.folder} was unloaded; load it again to use it")
        if self.alive():
            return
        ctx = mp.get_context("spawn")  # fork would copy the server's threads and locks (and cannot share CUDA)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, self.spec), name="rge-model", daemon=True)
        proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            proc.kill()
            raise ModelProcessError(f"the model process did not load {self.spec.folder} in {START_TIMEOUT_S:.0f} s")
        try:
            kind, value = parent.recv()
        except EOFError:
            proc.join(5)
            raise ModelProcessError(f"the model process exited while loading (exit code {proc.exitcode})") from None
        if kind == "error":
            proc.join(5)
            raise value
        self._proc, self._conn = proc, parent
        self.starts += 1
        log.info("model process %d serves %s", proc.pid, self.spec.folder)

    def start_in_background(self) -> threading.Thread:
        """Start the child without waiting; the first call waits for it (and raises its load error)."""

        def run():
            try:
                self.start()
            except Exception as e:  # noqa: BLE001 - the first call starts it again and raises
                log.warning("the model process did not start: %s", e)

        t = threading.Thread(target=run, name="rge-model-start", daemon=True)
        t.start()
        return t

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        """Stop the child for good: a later call raises instead of starting another copy of the model."""
        with self._lock:
            self._closed = True
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        self._proc = self._conn = None

    # -- calls ----------------------------------------------------------------------------------
    def direct(self, rows) -> np.ndarray:
        """(N, D) unit vectors of direct-mode rows."""
        return self._call("direct", rows, 0, None)

    def reason(self, rows, budget: int, streamer=None):
        """``(generated, vectors)`` as ``Encoder._generate`` + ``_finish`` give them; ``streamer``
        (a :class:`~rge_demo.embedding.batcher.SplitStreamer` or None) gets each step's tokens."""
        return self._call("reason", rows, budget, streamer)

    def _call(self, kind: str, rows, budget: int, streamer):
        with self._lock:
            self._start_locked()
            try:
                self._conn.send((kind, list(rows), budget, streamer is not None))
                while (reply := self._conn.recv())[0] in ("prompt", "step"):
                    tag, value = reply
                    streamer.put(torch.empty(0, dtype=torch.long) if tag == "prompt" else
                                 torch.tensor(value, dtype=torch.long))
            except (EOFError, OSError):
                code = None
                if self._proc is not None:
                    self._proc.join(1)
                    code = self._proc.exitcode
                self._proc = self._conn = None
                raise ModelProcessError(f"the model process exited during a call (exit code {code}); "
                                        "the next request starts a new one") from None
            except BaseException:
                # Left mid-reply (the streamer raised, or an interrupt): the rest of this call's messages
                # would answer the next call. Stop the child; the next call starts a new one.
                self._stop_locked()
                raise
            tag, value = reply
            if tag == "error":  # the child's own error: its reply is complete, the pipe in step
                raise value
            if streamer is not None:
                streamer.end()
            return value
