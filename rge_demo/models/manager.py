"""The model manager: a registry of model specs and the models loaded from them.

* A :class:`ModelSpec` names a checkpoint: a shipped micro model under ``assets/models``, a hub id
  (``MCG-NJU/RGE``) or anything a user adds (a local folder or another hub id).
* :class:`ModelManager` loads specs into :class:`LoadedModel` objects (model, processor, an
  :class:`Encoder` with its own lock, the checkpoint's prompt profile, a content fingerprint for
  cache keys) and keeps the loaded set within a memory budget by unloading the least recently
  used model first.

One manager lock serialises loads and unloads (so two threads asking for the same model load it
once, and the budget is accounted in one place); each loaded model has its own RLock, held by its
encoder for every forward pass and generation.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rge_demo.config import ASSETS_DIR, Settings, get_settings
from rge_demo.embedding.batcher import BatchedEncoder
from rge_demo.embedding.model_process import ChildSpec, ModelProcess
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.profiles import PromptProfile, profile_for

from .loading import (
    CheckpointError,
    ModelError,
    estimate_memory_bytes,
    fingerprint,
    load_checkpoint,
    looks_like_hub_id,
    resolve_device,
    resolve_dtype,
    resolve_source,
    summarize,
)

log = logging.getLogger(__name__)

KINDS = ("micro", "hub", "local")
_MB = 1 << 20


class UnknownModel(ModelError):
    """A name that is not registered, not a local folder and not a hub id."""


class ModelNotAvailable(ModelError):
    """A registered model whose files are not here (e.g. a shipped micro model not built yet)."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to show it."""

    name: str  # registry key shown in the UI and accepted by the CLI
    source: str  # a local folder or a hub id
    description: str = ""
    kind: str = "local"  # "micro" (shipped in assets/), "hub" or "local"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model spec {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.name or not self.source:
            raise ValueError("model spec needs a name and a source")

    @property
    def available(self) -> bool:
        """Local folders must exist; a hub id counts as available (it may need a download)."""
        return self.kind == "hub" or (Path(self.source) / "config.json").is_file()

    def folder(self) -> Path:
        """The checkpoint's folder: the local one, or the hub id's snapshot (a hub model never reads a
        folder of the working directory that happens to be spelt like it)."""
        return resolve_source(self.source, hub=self.kind == "hub")

    @property
    def availability(self) -> str:
        if self.kind == "hub":
            return "hub (downloaded on first load if not cached)"
        return "available" if self.available else f"not available (no checkpoint at {self.source})"


def default_specs() -> list[ModelSpec]:
    models = ASSETS_DIR / "models"
    return [
        ModelSpec("rge-micro", str(models / "rge-micro"),
                  "micro Qwen2.5-VL trained with RGE (reasoning + contrastive) on the synthetic world", "micro"),
        ModelSpec("baseline-micro", str(models / "baseline-micro"),
                  "the same micro model trained without rationales (contrastive only), same data and budget",
                  "micro"),
        ModelSpec("embed-rl-reasoner-micro", str(models / "embed-rl-reasoner-micro"),
                  "Embed-RL's Reasoner: rge-micro trained by EG-RL on rge-micro's retrieval reward; pick it as "
                  "Compare's Reasoner, with rge-micro as the model in use (the Embedder)", "micro"),
        ModelSpec("MCG-NJU/RGE", "MCG-NJU/RGE",
                  "the paper's released RGE checkpoint (Qwen2.5-VL-3B, about 7.5 GB in bf16)", "hub"),
    ]


@dataclass
class LoadedModel:
    """A model in memory, ready to embed with ``encoder``."""

    spec: ModelSpec
    model: torch.nn.Module
    processor: object
    encoder: Encoder
    fingerprint: str
    device: str
    dtype: str
    quantization: str | None
    parameters: int
    memory_bytes: int
    profile: PromptProfile | None = None  # the checkpoint's prompt profile (config key rge_profile)
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    load_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def lock(self) -> threading.RLock:
        return self.encoder.lock

    def status(self) -> dict:
        return {
            "name": self.spec.name,
            "source": self.spec.source,
            "kind": self.spec.kind,
            "device": self.device,
            "dtype": self.dtype,
            "quantization": self.quantization or "none",
            "parameters": self.parameters,
            "memory_mb": round(self.memory_bytes / _MB, 1),
            "loaded_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.loaded_at)),
            "load_seconds": round(self.load_seconds, 2),
            "fingerprint": self.fingerprint[:12],
            "profile": self.profile.name if self.profile else "",
        }


class ModelManager:
    """Registry + loaded models under a memory budget (LRU eviction)."""

    def __init__(self, settings: Settings | None = None, specs: list[ModelSpec] | None = None):
        self.settings = settings or get_settings()
        self.device = resolve_device(self.settings.device)
        self.budget_bytes = self._budget_bytes()
        self._specs: dict[str, ModelSpec] = {s.name: s for s in (default_specs() if specs is None else specs)}
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.RLock()

    # -- registry ------------------------------------------------------------------------------
    def specs(self) -> list[ModelSpec]:
        with self._lock:
            return list(self._specs.values())

    def register(self, path_or_id: str | os.PathLike, name: str | None = None, description: str = "", *,
                 hub: bool = False) -> ModelSpec:
        """Add a local folder or a hub id to the registry (idempotent for the same source); ``hub``: the
        text is a hub id only, whatever the working directory holds."""
        text = str(path_or_id)
        path = Path(text).expanduser()
        if not hub and path.is_dir():
            source, kind = str(path.resolve()), "local"
            default_name = path.resolve().name
        elif looks_like_hub_id(text):
            source, kind, default_name = text, "hub", text
        else:
            raise UnknownModel(f"{text}: not a registered model ({', '.join(self._specs)}), "
                               "not a local folder and not a hub id (owner/name)")
        with self._lock:
            for spec in self._specs.values():
                if spec.source == source:
                    return spec
            name = name or default_name
            if name in self._specs:
                name = f"{name} ({source})"
            spec = ModelSpec(name, source, description or f"user-added {kind} model", kind)
            self._specs[name] = spec
            log.info("registered model %r -> %s", name, source)
            return spec

    def unregister(self, name: str) -> bool:
        """Drop a user-added model that is not loaded from the registry; True when it was dropped."""
        with self._lock:
            if name in self._loaded or name not in self._specs or name in {s.name for s in default_specs()}:
                return False
            del self._specs[name]
            log.info("unregistered model %r", name)
            return True

    def resolve(self, name_or_path: str | os.PathLike) -> ModelSpec:
        """The spec for a registry name or source; other folders / hub ids are registered first."""
        text = str(name_or_path)
        with self._lock:
            if text in self._specs:
                return self._specs[text]
            path = Path(text).expanduser()
            source = str(path.resolve()) if path.is_dir() else text
            for spec in self._specs.values():
                if spec.source == source:
                    return spec
            return self.register(text)

    def catalog(self) -> list[dict]:
        """Every registered model with its state: loaded / available / not available."""
        with self._lock:
            rows = []
            for spec in self._specs.values():
                state = "loaded" if spec.name in self._loaded else spec.availability
                rows.append({"name": spec.name, "source": spec.source, "kind": spec.kind,
                             "description": spec.description, "state": state})
            return rows

    # -- loading -------------------------------------------------------------------------------
    def loaded_otherwise(self, name_or_path: str | os.PathLike, dtype: str = "auto",
                         quantization: str | None = None) -> LoadedModel | None:
        """The loaded model that :meth:`load` with these settings would reload (None: not loaded, or loaded so)."""
        want = str(resolve_dtype(dtype, self.device)).removeprefix("torch.")
        with self._lock:
            current = self._loaded.get(self.resolve(name_or_path).name)
            return current if current is not None and (current.dtype, current.quantization) != (want, quantization) \
                else None

    def load(self, name_or_path: str | os.PathLike, dtype: str = "auto", quantization: str | None = None,
             *, add_emb_token: bool = False) -> LoadedModel:
        """Load (or return the already loaded) model; evicts least recently used models over budget."""
        spec = self.resolve(name_or_path)
        want_dtype = str(resolve_dtype(dtype, self.device)).removeprefix("torch.")
        with self._lock:
            current = self._loaded.get(spec.name)
            if current is not None:
                if (current.dtype, current.quantization) == (want_dtype, quantization):
                    current.last_used = time.monotonic()
                    return current
                log.info("reloading %s as %s/%s", spec.name, want_dtype, quantization or "no quantization")
                self._unload_locked(spec.name)
            if not spec.available:
                raise ModelNotAvailable(f"model {spec.name!r} is {spec.availability}")
            folder = spec.folder()
            self._evict_for(estimate_memory_bytes(folder, resolve_dtype(dtype, self.device), quantization),
                            keep=spec.name)
            t0 = time.perf_counter()
            model, processor = load_checkpoint(folder, device=self.device, dtype=dtype,
                                               quantization=quantization, add_emb_token=add_emb_token)
            fp = fingerprint(model) if add_emb_token else fingerprint(folder)
            info = summarize(model)
            profile = profile_for(model.config)  # load_checkpoint has checked it exists
            process = None
            # A second copy of the weights, for Compare's and search's calls; not for a model whose <emb> row
            # was just added (resizing draws new rows at random, so the child's would differ).
            if self.settings.uses_model_process and not add_emb_token:
                process = ModelProcess(ChildSpec(str(folder), self.device, dtype, quantization,
                                                 self.settings.max_new_tokens, torch.get_num_threads()))
                process.start_in_background()
            encoder = BatchedEncoder(model, processor, max_new_tokens=self.settings.max_new_tokens,
                                     lock=threading.RLock(), profile=profile, process=process,
                                     continuous=self.settings.batching == "continuous")
            loaded = LoadedModel(
                spec=spec, model=model, processor=processor, encoder=encoder,
                fingerprint=fp, device=info["device"], dtype=info["dtype"], quantization=quantization,
                parameters=info["parameters"], memory_bytes=info["memory_bytes"] * (2 if process else 1),
                profile=profile,
                load_seconds=time.perf_counter() - t0,
            )
            self._loaded[spec.name] = loaded
            self._evict_for(0, keep=spec.name)
            return loaded

    def get(self, name: str) -> LoadedModel:
        """A loaded model by registry name (or source); marks it as recently used."""
        with self._lock:
            loaded = self._loaded.get(name) or self._loaded.get(self._name_of(name) or "")
            if loaded is None:
                raise ModelError(f"model {name!r} is not loaded (loaded: {', '.join(self._loaded) or 'none'})")
            loaded.last_used = time.monotonic()
            return loaded

    def unload(self, name: str) -> bool:
        """Drop a loaded model and free its memory; False if it was not loaded."""
        with self._lock:
            key = name if name in self._loaded else self._name_of(name)
            if key is None or key not in self._loaded:
                return False
            self._unload_locked(key)
            return True

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def status(self) -> list[dict]:
        """One row per loaded model, most recently used first."""
        with self._lock:
            return [m.status() for m in sorted(self._loaded.values(), key=lambda m: -m.last_used)]

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(m.memory_bytes for m in self._loaded.values())

    # -- internals -----------------------------------------------------------------------------
    def _name_of(self, name_or_path: str) -> str | None:
        path = Path(name_or_path).expanduser()
        source = str(path.resolve()) if path.is_dir() else name_or_path
        return next((s.name for s in self._specs.values() if s.source == source), None)

    def _evict_for(self, incoming: int, keep: str) -> None:
        """Unload least recently used models (never ``keep``) until loaded + incoming fits the budget."""
        while self.memory_bytes() + incoming > self.budget_bytes:
            victims = sorted((m for m in self._loaded.values() if m.name != keep), key=lambda m: m.last_used)
            if not victims:
                if self.memory_bytes() + incoming > self.budget_bytes:
                    log.warning("model %s (%.1f MB) alone exceeds the memory budget of %.1f MB",
                                keep, (self.memory_bytes() + incoming) / _MB, self.budget_bytes / _MB)
                return
            log.info("memory budget %.1f MB: unloading least recently used model %s",
                     self.budget_bytes / _MB, victims[0].name)
            self._unload_locked(victims[0].name)

    def _unload_locked(self, name: str) -> None:
        loaded = self._loaded.pop(name)
        with loaded.lock:  # wait for a running forward pass / generation to finish
            pass
        loaded.encoder.close()  # its model process, if any
        log.info("unloaded %s (%.1f MB)", name, loaded.memory_bytes / _MB)
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _budget_bytes(self) -> int:
        if self.settings.memory_budget_gb is not None:
            return int(self.settings.memory_budget_gb * (1 << 30))
        if self.device.startswith("cuda"):
            return int(0.9 * torch.cuda.get_device_properties(torch.device(self.device)).total_memory)
        try:
            return int(0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return 8 << 30


__all__ = ["CheckpointError", "LoadedModel", "ModelError", "ModelManager", "ModelNotAvailable", "ModelSpec",
           "UnknownModel", "default_specs"]
