"""Start the real app (``python app.py``) as a subprocess on a free port, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningApp:
    def __init__(self, model_dir: Path, cache_dir: Path, max_new_tokens: int = 8, timeout: float = 180,
                 extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = cache_dir / "app.log"
        env = {**os.environ, "RGE_MODEL": str(model_dir), "RGE_CACHE_DIR": str(cache_dir),
               "RGE_MAX_NEW_TOKENS": str(max_new_tokens), "GRADIO_ANALYTICS_ENABLED": "False",
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(extra_env or {})}
        self.log = open(self.log_path, "w")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "app.py", "--port", str(self.port)], cwd=REPO, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                self.ready_seconds = time.perf_counter() - self.t0
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"app not up after {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def wait_for_log(self, *needles: str, timeout: float = 300) -> float:
        """Seconds since start when the app's log first holds one of ``needles`` (TimeoutError after ``timeout``)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.log.flush()
            if any(n in self.log_path.read_text(errors="replace") for n in needles):
                return time.perf_counter() - self.t0
            if not self.alive():
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"none of {needles} in the app's log after {timeout} s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
