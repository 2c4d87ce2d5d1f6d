"""Checkpoint loading: a Qwen2-VL / Qwen2.5-VL RGE model and its processor from a folder or a hub id.

Loading is strict: a missing, unexpected or mis-shaped weight is a :class:`CheckpointError`, never
a silently re-initialised layer. Checkpoints saved by transformers 4.x (``model.layers.*``,
``visual.*``, the text model's fields at the top of ``config.json``) load under transformers 5,
which maps those names itself (and writes them back on save); ``tests/test_models.py`` checks both
spellings load with every weight, ``tests/test_released_layout.py`` the released MCG-NJU/RGE layout.

Before transformers sees a folder, :func:`check_checkpoint` reads what it cheaply can: every JSON
file parses, ``config.json`` names a supported architecture, every weight file listed exists and
each safetensors header fits its file. Each failure is a :class:`CheckpointFileError` whose
message names the file, so the CLI prints one line and the app one message.

The processor is built by :func:`rge_demo.models.processor.load_processor` (image-only, no
torchvision), with the pixel limits of the checkpoint's prompt profile
(:func:`rge_demo.embedding.profiles.profile_for`).

A hub id is resolved to a local snapshot folder first (cache only); the hub is asked only when it
is reachable, so an offline machine gets a clear error at once instead of minutes of retries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

from rge_demo.config import autodetect_device
from rge_demo.embedding.encoder import NotAnRGEModel, emb_token_id
from rge_demo.embedding.profiles import (
    CONFIG_KEY,
    DEFAULT_PROFILE,
    PROFILE_DIR,
    ProfileError,
    PromptProfile,
    profile_for,
)
from rge_demo.embedding.prompts import EMB_TOKEN
from rge_demo.errors import RGEUserError

from .processor import load_processor

log = logging.getLogger(__name__)

QUANTIZATIONS = (None, "8bit", "4bit")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Small files that shape the prompt or the pixels: part of the fingerprint.
PROCESSING_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json", "processor_config.json",
                    "preprocessor_config.json")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
# model_type -> the generation class that loads it (the architecture config.json must name).
MODEL_CLASSES = {
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
}
# Every JSON file a checkpoint may hold; each one present must parse.
JSON_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "chat_template.json", "vocab.json", "model.safetensors.index.json")
SAFETENSORS_INDEX = "model.safetensors.index.json"
_MIB = 1 << 20
_PROBE_TIMEOUT_S = 3.0
_ETAG_TIMEOUT_S = 10.0
_SHOWN_KEYS = 5


class ModelError(RGEUserError):
    """Base of every model loading / management error; the message is meant for the user."""


class CheckpointError(ModelError):
    """A checkpoint that cannot be found, reached or loaded as it is."""


class NotAnRGECheckpoint(NotAnRGEModel, CheckpointError):
    """The checkpoint's tokenizer has no ``<emb>`` token."""


class CheckpointFileError(CheckpointError):
    """A file of the checkpoint that is not what it should be; the message starts with its path."""


class InvalidJSON(CheckpointFileError):
    """A JSON file of the checkpoint (config.json, tokenizer files, the weight index) that does not parse."""


class CorruptWeights(CheckpointFileError):
    """A weight file that is truncated, not safetensors, or missing although the index lists it."""


class UnsupportedArchitecture(CheckpointFileError):
    """A config.json for another architecture than Qwen2-VL / Qwen2.5-VL conditional generation."""


class QuantizationError(ModelError):
    """8-bit / 4-bit loading asked for where it cannot work."""


# ------------------------------------------------------------------------------- resolution


def resolve_device(device: str | None) -> str:
    device = device or "auto"
    if device == "auto":
        return autodetect_device()
    try:
        torch.device(device)
    except RuntimeError:
        raise ModelError(f"device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA GPU is available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("device 'mps' asked for, but MPS is not available")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """"auto": bfloat16 on CUDA (float16 where bf16 is unsupported), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def resolve_attn(attn_implementation: str | None, device: str, dtype: torch.dtype) -> str:
    """flash_attention_2 when flash_attn is installed and the model runs half precision on CUDA, else sdpa."""
    if attn_implementation:
        return attn_implementation
    if (device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16)
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def quantization_config(quantization: str | None, dtype: torch.dtype):
    if quantization not in QUANTIZATIONS:
        raise QuantizationError(f"quantization must be None, '8bit' or '4bit', got {quantization!r}")
    if quantization is None:
        return None
    if not torch.cuda.is_available():
        raise QuantizationError("8-bit/4-bit loading needs a CUDA GPU (bitsandbytes)")
    from transformers import BitsAndBytesConfig

    # The vision tower and lm_head stay in full precision: small, and the embedding reads pixels.
    skip = ["visual", "lm_head"]
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)


def looks_like_hub_id(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", s)) and not s.endswith((".", "-")) and ".." not in s


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set to a true value (env read now, not at import)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """A TCP connection to the hub endpoint within ``timeout`` (DNS included: run in a thread)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    ok = threading.Event()

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.set()
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True, name="hub-probe")
    t.start()
    t.join(timeout)
    return ok.is_set()


def resolve_source(path_or_id: str | os.PathLike, *, hub: bool = False) -> Path:
    """A local folder holding the checkpoint: the folder itself, or a hub id's snapshot.

    A hub id is looked up in the local cache first; it is downloaded only when the hub is
    reachable and offline mode is off. Raises :class:`CheckpointError` otherwise, at once.
    ``hub``: the text is a hub id only, never a folder of the working directory spelt the same.
    """
    text = str(path_or_id)
    path = Path(text).expanduser()
    if not hub and path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: no config.json here; this is not a model folder")
        return path.resolve()
    if not hub and path.exists():
        raise CheckpointError(f"{path}: is a file; give the checkpoint's folder")
    if not looks_like_hub_id(text):
        raise CheckpointError(f"{text}: no such folder, and not a hub id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if hub_offline() or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "no connection to the hub"
        raise CheckpointError(
            f"{text}: not a local folder, not in the local cache and the hub cannot be reached "
            f"(offline: {why}); download it on a connected machine or give a local folder")
    log.info("downloading %s from the hub", text)
    try:
        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS, etag_timeout=_ETAG_TIMEOUT_S))
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"{text}: download from the hub failed ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------- loading


def load_checkpoint(path_or_id: str | os.PathLike, *, device: str | None = "auto",
                    dtype: str | torch.dtype | None = "auto", quantization: str | None = None,
                    attn_implementation: str | None = None, add_emb_token: bool = False):
    """Load ``(model, processor)`` in eval mode, every weight accounted for.

    The processor's pixel limits come from the checkpoint's prompt profile (see
    :func:`checkpoint_profile`; None in the profile keeps the checkpoint's own limits).
    ``add_emb_token`` makes an RGE model out of a plain Qwen2.5-VL checkpoint: ``<emb>`` is added
    to the tokenizer (embeddings resized when the id does not fit) and ``config.emb_token_id`` set.
    Without it, a tokenizer lacking ``<emb>`` raises :class:`NotAnRGECheckpoint`.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    quant = quantization_config(quantization, torch_dtype)
    folder = resolve_source(path_or_id)
    model_class = MODEL_CLASSES[check_checkpoint(folder)["model_type"]]
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, StrictDataclassError) as e:  # the last: a field of a wrong type
        raise CheckpointFileError(f"{folder / 'config.json'}: cannot be read as a model config "
                                  f"({type(e).__name__}: {' '.join(str(e).split())})") from e
    profile = checkpoint_profile(config, folder)

    try:
        processor = load_processor(folder, min_pixels=profile.min_pixels, max_pixels=profile.max_pixels)
    except (OSError, ValueError, KeyError, TypeError, StrictDataclassError) as e:
        raise CheckpointError(f"{folder}: cannot load the processor/tokenizer "
                              f"({type(e).__name__}: {' '.join(str(e).split())})") from e
    tokenizer = processor.tokenizer
    try:
        emb_id = emb_token_id(tokenizer)
    except NotAnRGEModel:
        if not add_emb_token:
            raise NotAnRGECheckpoint(
                f"{path_or_id}: the tokenizer has no {EMB_TOKEN} token, so this is not an RGE checkpoint "
                f"(load it with add_emb_token=True to fine-tune it into one)") from None
        tokenizer.add_tokens([EMB_TOKEN], special_tokens=True)
        emb_id = emb_token_id(tokenizer)
        log.info("%s: added %s to the tokenizer as id %d", path_or_id, EMB_TOKEN, emb_id)

    kwargs = dict(config=config, dtype=torch_dtype,
                  attn_implementation=resolve_attn(attn_implementation, device, torch_dtype),
                  output_loading_info=True, ignore_mismatched_sizes=True, local_files_only=True)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if quant is not None or device != "cpu":
        kwargs["device_map"] = {"": device}
    try:
        model, info = model_class.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"{folder}: cannot load the model ({type(e).__name__}: {e})") from e
    check_loading_info(info, folder)

    if add_emb_token:
        if emb_id >= model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        model.config.emb_token_id = emb_id
    elif getattr(model.config, "emb_token_id", None) not in (None, emb_id):
        log.warning("%s: config.emb_token_id=%s but the tokenizer's %s is %d; using the tokenizer's",
                    folder, model.config.emb_token_id, EMB_TOKEN, emb_id)
    if quant is None and device == "cpu":
        model.to(device)
    model.eval()
    log.info("loaded %s on %s (%s): %s; profile %r, pixels %d..%d", path_or_id, device,
             str(torch_dtype).removeprefix("torch."), summary_line(model), profile.name, *processor.pixel_limits)
    return model, processor


def checkpoint_profile(config, folder: Path) -> PromptProfile:
    """The prompt profile ``config.json`` declares (key ``rge_profile``), else the reference one."""
    try:
        return profile_for(config)
    except ProfileError as e:
        raise CheckpointFileError(f"{folder / 'config.json'}: {CONFIG_KEY} {getattr(config, CONFIG_KEY, None)!r}: "
                                  f"{e}") from None


# ------------------------------------------------------------------------------ file checks


def check_checkpoint(folder: str | os.PathLike) -> dict:
    """Read what can be read cheaply before transformers does; returns the parsed config.json.

    Every JSON file present parses, config.json names a supported architecture, and every weight
    file exists with a safetensors header that fits in it. Raises :class:`CheckpointFileError`
    (naming the file) otherwise. No tensor data is read.
    """
    folder = Path(folder)
    parsed = {name: read_json(folder / name) for name in JSON_FILES if (folder / name).is_file()}
    config = parsed.get("config.json")
    if config is None:
        raise CheckpointError(f"{folder}: no config.json here; this is not a model folder")
    check_architecture(config, folder / "config.json")
    for path in weight_files(folder, parsed.get(SAFETENSORS_INDEX)):
        if path.suffix == ".safetensors":
            check_safetensors(path)
    return config


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InvalidJSON(f"{path}: not UTF-8 text, so not a JSON file") from None
    except json.JSONDecodeError as e:
        raise InvalidJSON(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except OSError as e:
        raise CheckpointFileError(f"{path}: cannot be read ({e.strerror or e})") from None


def check_architecture(config, path: Path) -> str:
    """The config's model_type when it is a Qwen2-VL / Qwen2.5-VL generation model; else an error."""
    if not isinstance(config, dict):
        raise InvalidJSON(f"{path}: holds a JSON {type(config).__name__}, not an object of model settings")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    supported = ", ".join(cls.__name__ for cls in MODEL_CLASSES.values())
    if model_type not in MODEL_CLASSES:
        named = f"architecture {', '.join(map(str, architectures))} " if architectures else ""
        raise UnsupportedArchitecture(f"{path}: {named}(model_type {model_type!r}) is not a Qwen2-VL / Qwen2.5-VL "
                                      f"model; rge-demo loads {supported} checkpoints")
    wanted = MODEL_CLASSES[model_type].__name__
    if architectures and wanted not in architectures:
        raise UnsupportedArchitecture(f"{path}: architecture {', '.join(map(str, architectures))} is not {wanted}; "
                                      "RGE needs the generation model (language-model head)")
    return model_type


def weight_files(folder: Path, index: dict | None = None) -> list[Path]:
    """The weight files transformers will read: the index's shards, model.safetensors or *.bin."""
    if index is not None:
        path = folder / SAFETENSORS_INDEX
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CorruptWeights(f"{path}: has no weight_map of tensor names to files")
        shards = sorted(set(map(str, weight_map.values())))
        for name in shards:
            if not (folder / name).is_file():
                raise CorruptWeights(f"{folder / name}: listed in {SAFETENSORS_INDEX} but not in the folder "
                                     "(an incomplete download?)")
        return [folder / name for name in shards]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not found:
        raise CheckpointError(f"{folder}: no weight files (model.safetensors, {SAFETENSORS_INDEX} or *.bin)")
    return found


def check_safetensors(path: Path) -> None:
    """The header parses and the tensors it describes fit in the file (a truncated download fails here)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
            if n <= 0 or 8 + n > size:
                raise CorruptWeights(f"{path}: not a safetensors file or cut short ({size} bytes; its header "
                                     f"length field says {max(n, 0)})")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptWeights(f"{path}: corrupt safetensors header (not JSON)") from None
    except OSError as e:
        raise CheckpointFileError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        end = max((int(meta["data_offsets"][1]) for key, meta in header.items() if key != "__metadata__"),
                  default=0)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        raise CorruptWeights(f"{path}: corrupt safetensors header (no data_offsets for some tensor)") from None
    if 8 + n + end > size:
        raise CorruptWeights(f"{path}: truncated: {size} bytes, but its header describes {8 + n + end} "
                             "(an incomplete download?)")


def check_loading_info(info: dict, where) -> None:
    """Refuse missing, unexpected or mismatched weights, naming a few of them."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(_key_name(k) for k in info.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:_SHOWN_KEYS]) + (f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")
            problems.append(f"{len(keys)} {kind.replace('_keys', '')} weight(s): {shown}")
    if info.get("error_msgs"):
        problems.append("errors: " + "; ".join(map(str, info["error_msgs"]))[:500])
    if problems:
        raise CheckpointError(f"{where}: refusing an incomplete or mismatched checkpoint - " + "; ".join(problems))


def _key_name(k) -> str:
    return k[0] if isinstance(k, tuple) else str(k)


# ------------------------------------------------------------------------------ fingerprints


def fingerprint(path_or_model) -> str:
    """A stable id of a checkpoint's content, for cache keys (sha256 hex).

    A folder: the config json, each weight file's name, size and sha256 of its first and last MiB,
    and the small tokenizer / processor files (they shape the prompt). A model object (e.g. built
    or changed in memory): its config and every tensor's name, shape, dtype and first/last MiB.
    """
    if isinstance(path_or_model, torch.nn.Module):
        return _fingerprint_module(path_or_model)
    folder = Path(path_or_model)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json; cannot fingerprint it")
    h = hashlib.sha256()
    config_bytes = (folder / "config.json").read_bytes()
    h.update(b"config.json\0" + config_bytes)
    profile_file = _profile_file(config_bytes)
    if profile_file is not None:  # the profile sets pixels and prompts: part of what the vectors depend on
        h.update(f"\0profile\0{profile_file.name}\0".encode() + profile_file.read_bytes())
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise CheckpointError(f"{folder}: no weight files (*.safetensors, *.bin)")
    for p in weights:
        size = p.stat().st_size
        h.update(f"\0{p.name}\0{size}\0".encode())
        h.update(_ends_digest(p, size))
    for name in PROCESSING_FILES:
        p = folder / name
        if p.is_file():
            h.update(f"\0{name}\0".encode() + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _profile_file(config_bytes: bytes) -> Path | None:
    try:
        name = json.loads(config_bytes).get(CONFIG_KEY) or DEFAULT_PROFILE
    except (ValueError, AttributeError):
        return None
    path = PROFILE_DIR / f"{name}.json"
    return path if isinstance(name, str) and path.is_file() else None


def _ends_digest(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        head = f.read(_MIB)
        tail = b""
        if size > _MIB:
            f.seek(max(size - _MIB, _MIB))
            tail = f.read()
    return hashlib.sha256(head + b"\0" + tail).digest()


def _fingerprint_module(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode())
    for name, t in model.state_dict().items():
        data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        h.update(f"\0{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(data[:_MIB] + data[-_MIB:] if len(data) > 2 * _MIB else data)
    return h.hexdigest()


# ---------------------------------------------------------------------------------- summaries


def summarize(model: torch.nn.Module) -> dict:
    """Parameters, memory (bytes and MB), dtype and device of a loaded model."""
    params = sum(p.numel() for p in model.parameters())
    try:
        memory = int(model.get_memory_footprint())
    except (AttributeError, RuntimeError):
        memory = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    first = next(model.parameters())
    return {
        "parameters": params,
        "memory_bytes": memory,
        "memory_mb": round(memory / _MIB, 1),
        "dtype": str(first.dtype).removeprefix("torch."),
        "device": str(first.device),
    }


def summary_line(model: torch.nn.Module) -> str:
    s = summarize(model)
    return f"{s['parameters'] / 1e6:.2f} M parameters, {s['memory_mb']:.1f} MB, {s['dtype']} on {s['device']}"


def estimate_memory_bytes(folder: str | os.PathLike, dtype: torch.dtype, quantization: str | None = None) -> int:
    """Memory the weights of ``folder`` take once loaded, from the safetensors headers (no tensor read).

    Falls back to the weight files' size. 8-bit ~ 1 byte per parameter, 4-bit ~ half a byte.
    """
    folder = Path(folder)
    numel, file_bytes = 0, 0
    for p in sorted(folder.glob("*.safetensors")):
        file_bytes += p.stat().st_size
        try:
            with p.open("rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
        except (OSError, ValueError):
            continue
        for key, meta in header.items():
            if key != "__metadata__":
                count = 1
                for d in meta["shape"]:
                    count *= d
                numel += count
    if not numel:
        return file_bytes or sum(p.stat().st_size for p in folder.glob("*.bin"))
    per = {"8bit": 1.0, "4bit": 0.5}.get(quantization, torch.finfo(dtype).bits / 8)
    return int(numel * per)
