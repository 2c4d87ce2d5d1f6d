"""Settings from RGE_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from rge_demo.config import ASSETS_DIR, REPO_ROOT, Settings, SettingsError, autodetect_device


def test_defaults():
    s = Settings.from_env({"HOME": "/home/someone"})
    assert s.model == "rge-micro" and s.device == "auto" and s.dtype == "auto"
    assert (s.host, s.port, s.share, s.max_new_tokens, s.memory_budget_gb) == ("127.0.0.1", 7860, False, 128, None)
    assert s.cache_dir.name == "rge-demo"
    assert Settings.from_env({"XDG_CACHE_HOME": "/xdg"}).cache_dir == Path("/xdg/rge-demo")
    assert ASSETS_DIR == REPO_ROOT / "assets" and (REPO_ROOT / "rge_demo" / "config.py").is_file()
    assert autodetect_device() in ("cuda", "mps", "cpu")


def test_reads_env():
    s = Settings.from_env({"RGE_CACHE_DIR": "/tmp/x", "RGE_MODEL": "baseline-micro", "RGE_DEVICE": "CPU",
                           "RGE_DTYPE": "bfloat16", "RGE_MEMORY_BUDGET_GB": "1.5", "RGE_HOST": "0.0.0.0",
                           "RGE_PORT": "8080", "RGE_SHARE": "yes", "RGE_MAX_NEW_TOKENS": "16"})
    assert s.cache_dir == Path("/tmp/x") and s.embeddings_dir == Path("/tmp/x/embeddings")
    assert (s.model, s.device, s.dtype, s.memory_budget_gb) == ("baseline-micro", "cpu", "bfloat16", 1.5)
    assert (s.host, s.port, s.share, s.max_new_tokens) == ("0.0.0.0", 8080, True, 16)
    assert s.resolved_device == "cpu"
    roots = Settings.from_env({"RGE_GALLERY_ROOTS": "/data/g: ~/g2", "RGE_MODEL_ROOTS": "/data/models"})
    assert roots.gallery_roots == (Path("/data/g"), Path("~/g2").expanduser())
    assert roots.model_roots == (Path("/data/models"),) and Settings.from_env({}).model_roots == ()


def test_model_process_setting():
    assert not Settings.from_env({}).uses_model_process  # the default: off
    assert Settings.from_env({"RGE_MODEL_PROCESS": "ON"}).uses_model_process
    assert Settings(device="cpu", model_process="auto").uses_model_process
    assert not Settings(device="cuda", model_process="auto").uses_model_process  # a second copy of the weights


def test_batching_setting():
    assert Settings.from_env({}).batching == "merged"
    assert Settings.from_env({"RGE_BATCHING": " Continuous "}).batching == "continuous"


@pytest.mark.parametrize("var,value,message", [
    ("RGE_PORT", "abc", "RGE_PORT must be an integer, got 'abc'"),
    ("RGE_PORT", "70000", "RGE_PORT must be an integer in 1..65535"),
    ("RGE_MAX_NEW_TOKENS", "0", "RGE_MAX_NEW_TOKENS must be a positive integer"),
    ("RGE_MEMORY_BUDGET_GB", "lots", "RGE_MEMORY_BUDGET_GB must be a number, got 'lots'"),
    ("RGE_MEMORY_BUDGET_GB", "-1", "RGE_MEMORY_BUDGET_GB must be a positive number"),
    ("RGE_DEVICE", "tpu", "RGE_DEVICE must be one of"),
    ("RGE_DTYPE", "fp8", "RGE_DTYPE must be one of"),
    ("RGE_SHARE", "maybe", "RGE_SHARE must be true/false"),
    ("RGE_MODEL_PROCESS", "sometimes", "RGE_MODEL_PROCESS must be one of off, on, auto"),
    ("RGE_BATCHING", "static", "RGE_BATCHING must be one of merged, continuous"),
])
def test_bad_values_are_named(var, value, message):
    with pytest.raises(SettingsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        Settings.from_env({var: value})
