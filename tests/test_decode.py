"""Continuous batching: rows that join a running decode at any step get exactly what generate gives them alone."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import colour_image, taught_inputs
from rge_demo.embedding.decode import DecodeBatch, Seq, supports
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.prompts import EmbedInput


def inputs():
    return taught_inputs() + [EmbedInput("Represent the given image with the following question:", "short",
                                         colour_image("green", size=(112, 84)))]


def alone(encoder, row, budget):
    """What ``generate`` gives one row by itself: (ids, forced, state or None)."""
    with torch.inference_mode():
        return encoder._generate([row], budget)[0]


def staggered(encoder, rows, budgets, joins):
    """Run ``rows`` through one DecodeBatch, row i admitted before step ``joins[i]``; the finished
    Seqs, in row order."""
    seqs = [Seq(r, b) for r, b in zip(rows, budgets, strict=True)]
    batch, finished, step = DecodeBatch(encoder), [], 0
    with torch.inference_mode():
        while len(finished) < len(seqs):
            batch.admit([s for s, j in zip(seqs, joins, strict=True) if j == step])
            finished += batch.step()
            step += 1
    return seqs


def assert_same(encoder, seqs, budgets):
    for seq, budget in zip(seqs, budgets, strict=True):
        ids, forced, state = alone(encoder, seq.row, budget)
        assert seq.rationale(encoder.emb_id, encoder.pad_id) == ids and seq.forced == forced
        if state is None:
            assert seq.state is None
        else:
            assert F.cosine_similarity(seq.state, state.float(), dim=0) >= 0.9999


@pytest.mark.parametrize("rule", ["append_emb", "last_token"])
def test_rows_joining_at_different_steps_equal_generate_alone(taught, rule):
    encoder = Encoder(*taught)
    encoder.profile = dataclasses.replace(encoder.profile, budget_rule=rule)
    rows = encoder.rows(inputs(), direct=False)
    budgets = [64, 64, 64, 6]  # the last one runs out of budget: forced under either rule
    seqs = staggered(encoder, rows, budgets, joins=[0, 3, 3, 9])
    assert [s.forced for s in seqs] == [False, False, False, True]
    assert len({len(s.tokens) for s in seqs}) >= 3  # rows of different lengths left at different steps
    assert_same(encoder, seqs, budgets)


def test_a_forced_budget_and_a_row_joining_after_others_left(taught):
    encoder = Encoder(*taught)
    encoder.force_budget = True
    rows = encoder.rows(inputs(), direct=False)
    budgets = [5, 12, 5, 9]
    seqs = staggered(encoder, rows, budgets, joins=[0, 0, 1, 8])  # row 3 joins after rows 0 and 2 are gone
    assert [len(s.tokens) for s in seqs] == budgets and not any(s.forced for s in seqs)
    assert_same(encoder, seqs, budgets)


def test_cache_columns_no_row_uses_are_dropped(taught):
    encoder = Encoder(*taught)
    rows = encoder.rows(inputs(), direct=False)
    long_prompt = max(range(len(rows)), key=lambda i: len(rows[i].ids))
    short = min(range(len(rows)), key=lambda i: len(rows[i].ids))
    batch = DecodeBatch(encoder)
    with torch.inference_mode():
        batch.admit([Seq(rows[long_prompt], 2)])
        batch.admit([Seq(rows[short], 40)])
        assert batch.mask.shape[1] == len(rows[long_prompt].ids)
        assert batch.step() == [] and len(batch.step()) == 1  # the 2-token row leaves
        assert batch.mask.shape[1] == len(rows[short].ids) + 2 and batch.mask.all()
        assert all(layer.keys.shape[2] == batch.mask.shape[1] for layer in batch.cache.layers)


def test_sliding_window_models_are_refused(taught):
    model, processor = taught
    assert supports(model)
    config = model.config.get_text_config()
    config.use_sliding_window = True
    try:
        assert not supports(model)
        with pytest.raises(ValueError, match="sliding-window"):
            DecodeBatch(Encoder(model, processor))
    finally:
        config.use_sliding_window = False
