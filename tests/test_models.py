"""Checkpoint loading (strict weights, legacy names, <emb>, offline hub ids) and the model manager."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import colour_image
from rge_demo.config import Settings
from rge_demo.embedding.encoder import Encoder, NotAnRGEModel
from rge_demo.embedding.prompts import EMB_TOKEN, EmbedInput
from rge_demo.models import loading
from rge_demo.models.loading import (
    CheckpointError,
    CheckpointFileError,
    ModelError,
    QuantizationError,
    fingerprint,
    load_checkpoint,
    summarize,
)
from rge_demo.models.manager import ModelManager, ModelNotAvailable, ModelSpec, UnknownModel

WEIGHTS = "model.safetensors"
INPUTS = [
    EmbedInput("Represent the given image for classification.", "", colour_image("red")),
    EmbedInput("Represent the given text.", "a blue square", None),
    EmbedInput("Represent the given image with the following question:", "how many?", colour_image("green")),
]


def variant(src, dst, edit_weights=None, edit_text=None):
    """A copy of checkpoint folder ``src`` with its weights and/or text files edited."""
    shutil.copytree(src, dst)
    if edit_weights is not None:
        sd = edit_weights(load_file(dst / WEIGHTS))
        save_file(sd, dst / WEIGHTS, metadata={"format": "pt"})
    if edit_text is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            p = dst / name
            p.write_text(edit_text(p.read_text(encoding="utf-8")), encoding="utf-8")
    return dst


def legacy_name(key: str) -> str:
    """transformers 5 module name -> the transformers 4.x checkpoint name."""
    if key.startswith("model.visual."):
        return key[len("model."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


def v5_name(key: str) -> str:
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + key[len("model."):]
    return key


def test_loads_every_weight(tiny, tiny_dir):
    model, processor = load_checkpoint(tiny_dir, device="cpu")
    want = tiny[0].state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert model.dtype == torch.float32 and not model.training
    assert type(processor).__name__ == "RGEProcessor"
    np.testing.assert_array_equal(Encoder(model, processor).direct(INPUTS), Encoder(*tiny).direct(INPUTS))


@pytest.mark.parametrize("rename", [legacy_name, v5_name], ids=["transformers4-names", "transformers5-names"])
def test_both_weight_spellings_load_identically(tiny, tiny_dir, tmp_path, rename):
    sd = {rename(k): v for k, v in tiny[0].state_dict().items()}
    if rename is legacy_name:
        assert all(k.startswith(("model.layers.", "model.embed_tokens", "model.norm", "visual.", "lm_head"))
                   for k in sd)
    folder = variant(tiny_dir, tmp_path / "ckpt", edit_weights=lambda _: {k: v.contiguous() for k, v in sd.items()})
    assert set(load_file(folder / WEIGHTS)) == set(sd)
    model, processor = load_checkpoint(folder, device="cpu")  # raises on any missing / unexpected weight
    np.testing.assert_array_equal(Encoder(model, processor).direct(INPUTS), Encoder(*tiny).direct(INPUTS))


def test_missing_weight_is_refused_by_name(tiny_dir, tmp_path):
    def drop(sd):
        del sd["model.norm.weight"]
        return sd

    with pytest.raises(CheckpointError, match=r"missing weight.*norm\.weight"):
        load_checkpoint(variant(tiny_dir, tmp_path / "ckpt", drop), device="cpu")


def test_unexpected_weight_is_refused_by_name(tiny_dir, tmp_path):
    def extra(sd):
        sd["model.layers.0.surprise.weight"] = torch.zeros(3)
        return sd

    with pytest.raises(CheckpointError, match=r"unexpected weight.*surprise\.weight"):
        load_checkpoint(variant(tiny_dir, tmp_path / "ckpt", extra), device="cpu")


def test_mismatched_weight_is_refused_by_name(tiny_dir, tmp_path):
    def reshape(sd):
        sd["model.norm.weight"] = torch.ones(5)
        return sd

    with pytest.raises(CheckpointError, match=r"mismatched weight.*norm\.weight"):
        load_checkpoint(variant(tiny_dir, tmp_path / "ckpt", reshape), device="cpu")


def test_tokenizer_without_emb(tiny_dir, tmp_path):
    folder = variant(tiny_dir, tmp_path / "plain", edit_text=lambda t: t.replace(EMB_TOKEN, "<nop>"))
    with pytest.raises(NotAnRGEModel, match="not an RGE checkpoint"):
        load_checkpoint(folder, device="cpu")
    with pytest.raises(ModelError):  # also a ModelError, for callers that catch those
        load_checkpoint(folder, device="cpu")

    model, processor = load_checkpoint(folder, device="cpu", add_emb_token=True)
    emb_id = processor.tokenizer.convert_tokens_to_ids(EMB_TOKEN)
    assert model.config.emb_token_id == emb_id
    assert model.get_input_embeddings().weight.shape[0] > emb_id
    assert model.get_output_embeddings().weight.shape[0] > emb_id
    vecs = Encoder(model, processor).direct(INPUTS)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantization_needs_cuda(tiny_dir, quantization):
    with pytest.raises(QuantizationError, match="needs a CUDA GPU"):
        load_checkpoint(tiny_dir, device="cpu", quantization=quantization)


def test_uncached_hub_id_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="not in the local cache and the hub cannot be reached"):
        load_checkpoint("MCG-NJU/RGE", device="cpu")
    # Offline mode off, but no route to the hub: the probe answers, not minutes of retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(CheckpointError, match="hub cannot be reached"):
        load_checkpoint("some-owner/some-uncached-model", device="cpu")
    assert time.perf_counter() - t0 < 5


def test_bad_sources_are_clear(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        load_checkpoint(tmp_path / "nope", device="cpu")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path, device="cpu")
    with pytest.raises(ModelError, match="dtype"):
        load_checkpoint(tiny_dir, device="cpu", dtype="float8")


def test_dtype_override(tiny_dir):
    model, _ = load_checkpoint(tiny_dir, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert summarize(model)["dtype"] == "bfloat16"


def test_fingerprint_stable_and_content_based(tiny_dir, tmp_path):
    fp = fingerprint(tiny_dir)
    assert fp == fingerprint(tiny_dir) and len(fp) == 64
    assert fingerprint(variant(tiny_dir, tmp_path / "copy")) == fp  # a copy is the same model

    def nudge(sd):
        sd["lm_head.weight"] = sd["lm_head.weight"] + 1e-3
        return sd

    assert fingerprint(variant(tiny_dir, tmp_path / "changed", nudge)) != fp


def with_config(src, dst, **changes):
    """A copy of checkpoint folder ``src`` with top-level config.json keys changed."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **changes}, indent=2))
    return dst


def test_micro_checkpoints_declare_their_profile(tiny_dir):
    assert json.loads((tiny_dir / "config.json").read_text())["rge_profile"] == "micro"
    _, processor = load_checkpoint(tiny_dir, device="cpu")
    assert processor.pixel_limits == (84 * 84, 84 * 84)  # the micro profile's, as the micro world was drawn


def test_fingerprint_includes_the_profile(tiny_dir, tmp_path):
    # Same weights and files, another profile: other pixels and prompts, so other vectors and cache keys.
    assert fingerprint(with_config(tiny_dir, tmp_path / "ref", rge_profile="reference")) != fingerprint(tiny_dir)


def test_unknown_profile_names_the_config(tiny_dir, tmp_path):
    folder = with_config(tiny_dir, tmp_path / "odd", rge_profile="no-such-profile")
    with pytest.raises(CheckpointFileError, match=r"config\.json: rge_profile 'no-such-profile'.*unknown prompt profile"):
        load_checkpoint(folder, device="cpu")


def test_fingerprint_of_a_model_object(tiny):
    model = tiny[0]
    assert fingerprint(model) == fingerprint(model)
    other = type(model)(model.config)
    assert fingerprint(other) != fingerprint(model)


# ------------------------------------------------------------------------------------- manager


def manager(tmp_path, budget_gb=None) -> ModelManager:
    settings = Settings(cache_dir=tmp_path / "cache", device="cpu", memory_budget_gb=budget_gb)
    return ModelManager(settings)


def test_manager_load_get_unload_status(tiny, tiny_dir, tmp_path):
    mm = manager(tmp_path)
    loaded = mm.load(str(tiny_dir))
    assert mm.load(str(tiny_dir)) is loaded  # already loaded: same object
    assert mm.get(loaded.name) is loaded and mm.get(str(tiny_dir)) is loaded
    assert loaded.fingerprint == fingerprint(tiny_dir)
    np.testing.assert_array_equal(loaded.encoder.direct(INPUTS), Encoder(*tiny).direct(INPUTS))
    (row,) = mm.status()
    assert row["name"] == loaded.name and row["source"] == str(tiny_dir.resolve())
    assert row["device"] == "cpu" and row["dtype"] == "float32" and row["quantization"] == "none"
    assert row["parameters"] == sum(p.numel() for p in tiny[0].parameters())
    assert row["memory_mb"] > 0 and row["loaded_at"]
    assert any(r["name"] == loaded.name and r["state"] == "loaded" for r in mm.catalog())
    assert mm.unload(loaded.name) and not mm.unload(loaded.name)
    assert mm.loaded() == [] and mm.status() == []
    with pytest.raises(ModelError, match="not loaded"):
        mm.get(loaded.name)


def test_manager_registry(tmp_path):
    mm = manager(tmp_path)
    names = {s.name: s for s in mm.specs()}
    assert {"rge-micro", "baseline-micro", "MCG-NJU/RGE"} <= names.keys()
    assert names["MCG-NJU/RGE"].kind == "hub"
    missing = ModelManager(mm.settings, specs=[ModelSpec("ghost", str(tmp_path / "ghost"), kind="micro")])
    assert missing.catalog()[0]["state"].startswith("not available")
    with pytest.raises(ModelNotAvailable, match="not available"):
        missing.load("ghost")
    with pytest.raises(UnknownModel, match="not a registered model"):
        mm.load(str(tmp_path / "no-such-folder"))
    spec = mm.register("someone/some-model")
    assert spec.kind == "hub" and mm.resolve("someone/some-model") is spec


def test_manager_lru_eviction(tiny_dir, taught_dir, tmp_path):
    third = variant(tiny_dir, tmp_path / "third")
    one = manager(tmp_path).load(str(tiny_dir))
    size_gb = one.memory_bytes / (1 << 30)
    mm = manager(tmp_path, budget_gb=2.5 * size_gb)  # room for two
    a = mm.load(str(tiny_dir))
    b = mm.load(str(taught_dir))
    assert {m.name for m in mm.loaded()} == {a.name, b.name}
    mm.get(a.name)  # a is now more recently used than b
    c = mm.load(str(third))
    assert {m.name for m in mm.loaded()} == {a.name, c.name}  # b, the least recently used, went
    assert mm.memory_bytes() <= mm.budget_bytes

    tight = manager(tmp_path, budget_gb=0.5 * size_gb)  # smaller than any model
    tight.load(str(tiny_dir))
    d = tight.load(str(third))  # never evicts the model being loaded
    assert [m.name for m in tight.loaded()] == [d.name]


def test_manager_loads_once_under_concurrency(tiny_dir, tmp_path, monkeypatch):
    from rge_demo.models import manager as manager_mod

    calls = []
    real = manager_mod.load_checkpoint

    def counting(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(manager_mod, "load_checkpoint", counting)
    mm = manager(tmp_path)
    barrier = threading.Barrier(4)
    results = [None] * 4

    def worker(i):
        barrier.wait()
        results[i] = mm.load(str(tiny_dir))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is results[0] for r in results) and results[0] is not None
    assert len(calls) == 1 and len(mm.loaded()) == 1
    assert isinstance(results[0].encoder.lock, type(threading.RLock()))
