"""Settings from ``RGE_*`` environment variables, the cache folder, and device autodetection.

Every entry point (app, CLI, background worker, tests) calls :func:`get_settings`; nothing else in
the library reads the environment for these values. Paths to shipped assets come from this file's
location, so the package works from any working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rge_demo.errors import RGEUserError

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
MODEL_PROCESS = ("off", "on", "auto")
BATCHING = ("merged", "continuous")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class SettingsError(RGEUserError, ValueError):
    """A setting (usually an ``RGE_*`` environment variable) with an unusable value."""


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/rge-demo`` if XDG_CACHE_HOME is set, else ``~/.cache/rge-demo``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rge-demo"


@dataclass
class Settings:
    """Runtime settings; :meth:`from_env` reads them from ``RGE_*`` variables."""

    cache_dir: Path = field(default_factory=default_cache_dir)  # embedding cache, runs, downloads (RGE_CACHE_DIR)
    model: str = "rge-micro"  # model loaded at start: a registry name, a local folder or a hub id (RGE_MODEL)
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps" (RGE_DEVICE)
    dtype: str = "auto"  # "auto" (bf16 on cuda, fp32 elsewhere), "float32", "bfloat16", "float16" (RGE_DTYPE)
    memory_budget_gb: float | None = None  # loaded models' total memory before LRU eviction; None = auto (RGE_MEMORY_BUDGET_GB)
    host: str = "127.0.0.1"  # web app bind address (RGE_HOST)
    port: int = 7860  # web app port (RGE_PORT)
    share: bool = False  # ask Gradio for a public share link (RGE_SHARE)
    max_new_tokens: int = 128  # rationale budget in reasoning mode (RGE_MAX_NEW_TOKENS)
    faiss_threshold: int = 50_000  # galleries with at least this many items search with FAISS (RGE_FAISS_THRESHOLD)
    stream_interval: float = 0.1  # seconds between two streamed rationale updates at least (RGE_STREAM_INTERVAL)
    max_upload_mb: float = 200.0  # largest file the web app accepts, in MB (RGE_MAX_UPLOAD_MB; Gradio's max_file_size)
    gallery_roots: tuple[Path, ...] = ()  # server folders a session may register galleries from (RGE_GALLERY_ROOTS)
    model_roots: tuple[Path, ...] = ()  # server folders a session may load models from by path (RGE_MODEL_ROOTS)
    retention_hours: float = 24.0  # uploaded files and refused uploads are deleted after this (RGE_RETENTION_HOURS)
    # Run the model calls of Compare and search in a process of their own (rge_demo.embedding.model_process):
    # "on", "off", or "auto" = on unless the device is CUDA (the child holds a second copy of the weights).
    # Off by default: on this 2-core CPU it did not measurably cut the 4-user latency (README) (RGE_MODEL_PROCESS).
    model_process: str = "off"
    # How concurrent reasoning requests share the model: "merged" (requests waiting together run as one
    # generate call) or "continuous" (a request joins the running decode at its next step:
    # rge_demo.embedding.decode). Merged by default: on this 2-core CPU continuous measured slower, as each
    # joining request costs a prefill forward of its own (README, Benchmarks); not yet measured on a GPU.
    # Continuous needs the model in this process; with RGE_MODEL_PROCESS on, calls are merged (RGE_BATCHING).
    batching: str = "merged"
    warm_maps: bool = True  # compute the sample galleries' Explore maps in the background at start (RGE_WARM_MAPS)

    def __post_init__(self):
        self.cache_dir = Path(self.cache_dir).expanduser()
        self.gallery_roots = tuple(Path(r).expanduser() for r in self.gallery_roots)
        self.model_roots = tuple(Path(r).expanduser() for r in self.model_roots)
        if not isinstance(self.model, str) or not self.model.strip():
            raise SettingsError(f"RGE_MODEL must be a model name, folder or hub id, got {self.model!r}")
        if not (self.device in DEVICES or re.fullmatch(r"cuda:\d+", str(self.device))):
            raise SettingsError(f"RGE_DEVICE must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise SettingsError(f"RGE_DTYPE must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise SettingsError(f"RGE_MEMORY_BUDGET_GB must be a positive number, got {self.memory_budget_gb!r}")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise SettingsError(f"RGE_PORT must be an integer in 1..65535, got {self.port!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SettingsError(f"RGE_MAX_NEW_TOKENS must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.faiss_threshold, int) or self.faiss_threshold < 0:
            raise SettingsError(f"RGE_FAISS_THRESHOLD must be a non-negative integer, got {self.faiss_threshold!r}")
        if not isinstance(self.stream_interval, int | float) or not 0 <= self.stream_interval <= 10:
            raise SettingsError(f"RGE_STREAM_INTERVAL must be a number of seconds in 0..10, got {self.stream_interval!r}")
        if not isinstance(self.max_upload_mb, int | float) or not self.max_upload_mb > 0:
            raise SettingsError(f"RGE_MAX_UPLOAD_MB must be a positive number of MB, got {self.max_upload_mb!r}")
        if self.model_process not in MODEL_PROCESS:
            raise SettingsError(f"RGE_MODEL_PROCESS must be one of {', '.join(MODEL_PROCESS)}, got {self.model_process!r}")
        if self.batching not in BATCHING:
            raise SettingsError(f"RGE_BATCHING must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        if not isinstance(self.retention_hours, int | float) or not self.retention_hours > 0:
            raise SettingsError(f"RGE_RETENTION_HOURS must be a positive number of hours, got {self.retention_hours!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        kw: dict = {}
        if env.get("RGE_CACHE_DIR"):
            kw["cache_dir"] = Path(env["RGE_CACHE_DIR"]).expanduser()
        else:
            kw["cache_dir"] = default_cache_dir(env)
        for var, name in (("RGE_MODEL", "model"), ("RGE_HOST", "host")):
            if env.get(var):
                kw[name] = env[var].strip()
        for var, name in (("RGE_DEVICE", "device"), ("RGE_DTYPE", "dtype")):
            if env.get(var):
                kw[name] = env[var].strip().lower()
        if env.get("RGE_MEMORY_BUDGET_GB"):
            kw["memory_budget_gb"] = _number(env, "RGE_MEMORY_BUDGET_GB")
        if env.get("RGE_PORT"):
            kw["port"] = _integer(env, "RGE_PORT")
        if env.get("RGE_MAX_NEW_TOKENS"):
            kw["max_new_tokens"] = _integer(env, "RGE_MAX_NEW_TOKENS")
        if env.get("RGE_FAISS_THRESHOLD"):
            kw["faiss_threshold"] = _integer(env, "RGE_FAISS_THRESHOLD")
        for var, name in (("RGE_GALLERY_ROOTS", "gallery_roots"), ("RGE_MODEL_ROOTS", "model_roots")):
            if env.get(var):
                kw[name] = tuple(r.strip() for r in env[var].split(os.pathsep) if r.strip())
        for var, name in (("RGE_STREAM_INTERVAL", "stream_interval"), ("RGE_MAX_UPLOAD_MB", "max_upload_mb"),
                          ("RGE_RETENTION_HOURS", "retention_hours")):
            if env.get(var):
                kw[name] = _number(env, var)
        if "RGE_SHARE" in env:
            kw["share"] = _boolean(env, "RGE_SHARE")
        if env.get("RGE_MODEL_PROCESS"):
            kw["model_process"] = env["RGE_MODEL_PROCESS"].strip().lower()
        if env.get("RGE_BATCHING"):
            kw["batching"] = env["RGE_BATCHING"].strip().lower()
        if "RGE_WARM_MAPS" in env:
            kw["warm_maps"] = _boolean(env, "RGE_WARM_MAPS")
        return cls(**kw)

    @property
    def resolved_device(self) -> str:
        """The concrete device: ``device`` with "auto" replaced by :func:`autodetect_device`."""
        return autodetect_device() if self.device == "auto" else self.device

    @property
    def uses_model_process(self) -> bool:
        """Whether loaded models run Compare's and search's calls in a child process."""
        if self.model_process == "auto":
            return not self.resolved_device.startswith("cuda")
        return self.model_process == "on"

    @property
    def embeddings_dir(self) -> Path:
        """Where the on-disk embedding cache lives."""
        return self.cache_dir / "embeddings"


def get_settings() -> Settings:
    """Settings from the current environment (read each call: cheap, and tests may change it)."""
    return Settings.from_env()


def autodetect_device() -> str:
    """"cuda" if a CUDA GPU is usable, else "mps" (Apple silicon), else "cpu"."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _integer(env: Mapping[str, str], var: str) -> int:
    raw = env[var].strip()
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{var} must be an integer, got {env[var]!r}") from None


def _number(env: Mapping[str, str], var: str) -> float:
    raw = env[var].strip()
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{var} must be a number, got {env[var]!r}") from None


def _boolean(env: Mapping[str, str], var: str) -> bool:
    raw = env[var].strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{var} must be true/false (1/0, yes/no, on/off), got {env[var]!r}")
