"""Embed-RL on the real tiny models: the Reasoner + Embedder pair at inference, and the EG-RL stage
(GRPO on the frozen Embedder's reward) through the trainer's entry point."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import taught_inputs
from rge_demo.embedding.encoder import Encoder, collate
from rge_demo.embedding.pair import ReasonerEmbedder
from rge_demo.models.loading import load_checkpoint
from rge_demo.training.config import ConfigError, TrainConfig
from rge_demo.training.eg_rl import suffix_logps
from rge_demo.training.trainer import train


def test_a_pair_embeds_the_reasoners_tcot_with_the_embedder(taught, tiny):
    reasoner = Encoder(*taught)
    inputs = taught_inputs()
    alone = reasoner.reason(inputs)
    same = ReasonerEmbedder(reasoner, reasoner).reason(inputs)  # one model in both roles: plain RGE
    assert [r.rationale for r in same] == [r.rationale for r in alone]
    np.testing.assert_allclose(np.stack([r.vector for r in same]), np.stack([r.vector for r in alone]), atol=1e-5)

    embedder = Encoder(*tiny)  # another model embeds the same T-CoTs
    pair = ReasonerEmbedder(reasoner, embedder)
    out = pair.reason(inputs, batch_size=2)
    assert [r.rationale for r in out] == [r.rationale for r in alone]
    want = embedder.with_rationale(inputs, [r.rationale for r in alone])
    np.testing.assert_allclose(np.stack([r.vector for r in out]), want, atol=1e-5)
    np.testing.assert_allclose(pair.direct(inputs), embedder.direct(inputs), atol=1e-6)
    assert all(r.prompt.endswith(r.rationale + "<emb>") for r in out)


def test_suffix_logps_equal_each_rows_own_forward(taught):
    model, processor = taught
    enc = Encoder(model, processor)
    rows = enc.rows(taught_inputs(), direct=False)
    tok = processor.tokenizer
    suffixes = [tok.encode(t, add_special_tokens=False) for t in ("answer one", "one red. answer two", "x")]
    batch = collate(rows, tok.pad_token_id, suffixes)
    with torch.no_grad():
        logps, mask = suffix_logps(model, batch, [len(s) for s in suffixes])
    assert logps.shape == mask.shape == (3, max(map(len, suffixes)))
    for i, (row, s) in enumerate(zip(rows, suffixes)):
        one = collate([row], tok.pad_token_id, [s])
        with torch.no_grad():
            logits = model(**one).logits[0, -len(s) - 1:-1]  # predicting the suffix
        want = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(s)[:, None]).squeeze(1)
        got = logps[i][mask[i].bool()]
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
        assert mask[i].sum() == len(s)


@pytest.mark.slow
def test_eg_rl_trains_the_reasoner_by_the_frozen_embedders_reward(tmp_path, taught_dir):
    cfg = TrainConfig(stage="eg-rl", init=str(taught_dir), output_dir=str(tmp_path / "rl"), tasks=["count"],
                      train_per_task=20, steps=3, batch_size=2, group_size=3, lr=1e-3, warmup_steps=0,
                      max_new_tokens=6, probe_every=0, save_every=0, threads=1, seed=0, shape_probe=False)
    result = train(cfg)
    assert result.status == "finished" and result.steps == 3
    records = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["eg-rl"] * 3
    for r in records:
        assert 0 <= r["retrieval_reward"] <= 1 and 0 <= r["format_reward"] <= 1
        assert r["reward"] == pytest.approx(r["retrieval_reward"] + 0.5 * r["format_reward"], abs=1e-6)
        assert r["kl"] >= 0 and 0 <= r["clip_frac"] <= 1 and np.isfinite(r["loss"])
        assert len(r["samples"]) == 2 and r["rationale_tokens"] <= 6
    assert records[0]["kl"] == pytest.approx(0, abs=1e-6)  # the first step's policy is the reference
    before, _ = load_checkpoint(taught_dir, device="cpu", dtype="float32")
    after, _ = load_checkpoint(result.model_dir, device="cpu", dtype="float32")
    moved = [n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(a, b)]
    assert moved  # the Reasoner was updated (the Embedder and the reference are frozen copies)


def test_eg_rl_config_is_checked():
    with pytest.raises(ConfigError, match="group_size must be an integer >= 2"):
        TrainConfig(stage="eg-rl", group_size=1)
    with pytest.raises(ConfigError, match="kl_beta must be >= 0"):
        TrainConfig(stage="eg-rl", kl_beta=-1)
    with pytest.raises(ConfigError, match="init must be a checkpoint folder"):
        train(TrainConfig(stage="eg-rl", init="test", output_dir="/tmp/rge-eg-rl-never", tasks=["count"],
                          train_per_task=4, steps=1, batch_size=2, probe_every=0, shape_probe=False))


@pytest.mark.slow
def test_the_embedder_stage_reads_a_frozen_reasoners_tcots(tmp_path, tiny_dir, taught_dir):
    base = dict(stage="embedder", init=str(tiny_dir), tasks=["count"], train_per_task=20, steps=3, batch_size=4,
                lr=3e-4, warmup_steps=0, max_new_tokens=6, probe_every=0, save_every=0, threads=1, shape_probe=False)
    with_reasoner = train(TrainConfig(**base, reasoner=str(taught_dir), output_dir=str(tmp_path / "e")))
    oracle = train(TrainConfig(**base, output_dir=str(tmp_path / "o")))  # no reasoner: oracle rationales
    for result in (with_reasoner, oracle):
        records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
        assert result.status == "finished" and [r["phase"] for r in records] == ["embedder"] * 3
        assert all(r["lm_loss"] == 0 and np.isfinite(r["contrastive_loss"]) and r["contrastive_loss"] > 0
                   for r in records)
    first = json.loads((with_reasoner.output_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rationale_tokens"] <= 6 and len(first["samples"]) == 2  # the Reasoner's T-CoTs were read
    embedder, _ = load_checkpoint(with_reasoner.model_dir, device="cpu", dtype="float32")
    start, _ = load_checkpoint(tiny_dir, device="cpu", dtype="float32")
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), embedder.parameters()))
