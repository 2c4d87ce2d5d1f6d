import dataclasses

import numpy as np
import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from conftest import TAUGHT, colour_image, taught_inputs
from rge_demo.embedding.encoder import Encoder, collate, emb_states
from rge_demo.embedding.profiles import get_profile
from rge_demo.embedding.prompts import EMB_TOKEN, EmbedInput, from_mmeb_text, instruction_for, prompt_text


def test_micro_prompt_layout_image_first_and_emb_last(tiny):
    """The micro profile's chat layout (the reference profile's inline image and newline rule:
    tests/test_profiles.py and tests/test_golden_prompts.py)."""
    _, processor = tiny
    inp = EmbedInput("Represent the given image with the following question:", "How many?", colour_image("red"))
    direct = prompt_text(processor, inp, direct=True)
    reason = prompt_text(processor, inp, direct=False)
    assert direct == reason + EMB_TOKEN
    user = reason.split("<|im_start|>user\n")[1]
    assert user.startswith("<|vision_start|><|image_pad|><|vision_end|>Represent the given image")
    assert reason.endswith("<|im_start|>assistant\n")


def test_instructions_and_mmeb_placeholder():
    assert instruction_for("vqa", "query").startswith("Represent the given image")
    with pytest.raises(ValueError, match="unknown task kind"):
        instruction_for("poetry")
    assert from_mmeb_text("<|image_1|>\nRepresent the given image.") == "Represent the given image."


def test_direct_vectors_are_unit_and_batch_invariant(tiny):
    enc = Encoder(*tiny)
    inputs = taught_inputs() + [EmbedInput("", "just text, no instruction", None)]
    batched = enc.direct(inputs)
    assert batched.shape == (4, 64) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    alone = np.stack([enc.direct([x])[0] for x in inputs])
    assert (batched * alone).sum(1).min() >= 0.999


def test_reasoning_rows_stop_at_their_own_step_and_match_alone(taught_encoder):
    inputs = taught_inputs()
    batched = taught_encoder.reason(inputs)
    assert [r.rationale for r in batched] == [TAUGHT[x.text] for x in inputs]
    assert len({r.tokens for r in batched}) == 3  # three different stop steps
    assert not any(r.forced for r in batched)
    for x, b in zip(inputs, batched):
        alone = taught_encoder.reason([x])[0]
        assert alone.rationale == b.rationale
        assert float(alone.vector @ b.vector) >= 0.999
    assert batched[0].prompt.endswith(TAUGHT["short"] + EMB_TOKEN)


def test_budget_forces_emb(taught_encoder):
    inputs = taught_inputs()
    results = taught_encoder.reason(inputs, max_new_tokens=3)
    assert all(r.forced and r.tokens == 3 for r in results)
    # the forced row embeds exactly like the same truncated rationale given by hand
    given = taught_encoder.with_rationale(inputs[:1], [results[0].rationale])
    assert float(given[0] @ results[0].vector) >= 0.999


def test_stream_yields_growing_text_then_vector(taught_encoder):
    x = taught_inputs()[2]
    events = list(taught_encoder.stream(x))
    texts = [e.text for e in events[:-1]]
    assert len(texts) >= 3 and all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    final = events[-1].result
    assert final is not None and final.rationale == TAUGHT["long"]
    assert float(final.vector @ taught_encoder.reason([x])[0].vector) >= 0.999


def test_a_stream_cut_by_the_budget_shows_no_text_past_it(taught_encoder):
    """generate runs one step past the budget (to feed <emb> back in); that step is not text, so
    every streamed text is a prefix of the final rationale."""
    x = taught_inputs()[2]
    for budget in (3, 5):
        events = list(taught_encoder.stream(x, max_new_tokens=budget))
        final = events[-1].result
        assert final.forced and final.tokens == budget
        assert all(final.rationale.startswith(e.text) for e in events[:-1]), [e.text for e in events]


def test_with_rationale_matches_generated(taught_encoder):
    inputs = taught_inputs()
    generated = taught_encoder.reason(inputs)
    given = taught_encoder.with_rationale(inputs, [r.rationale for r in generated])
    assert (given * np.stack([r.vector for r in generated])).sum(1).min() >= 0.999


# -- the read-out at <emb>: a hook on the final norm vs the old all-layer hidden states ------------

def all_layer_readout(enc: Encoder, inputs, budget: int, last_token: bool = False):
    """The naive reference: ``generate(output_hidden_states=True)`` and index the kept states.

    ``hidden_states[s][-1]`` is the final layer (after the norm) of step s, and step s >= 1 feeds
    generated token s - 1 in. A row whose ``<emb>`` is generated token j < budget is embedded at
    step j + 1; a forced row at step ``budget`` (its last token) or, without ``last_token``, None.
    """
    rows = enc.rows(inputs, direct=False)
    batch = collate(rows, enc.pad_id)
    prompt_len = batch["input_ids"].shape[1]

    class StopAfterEmb(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids[:, prompt_len:-1] == enc.emb_id).any(dim=1)

    with torch.inference_mode():
        out = enc.model.generate(**batch, max_new_tokens=budget + 1, do_sample=False, pad_token_id=enc.pad_id,
                                 suppress_tokens=enc.suppress, return_dict_in_generate=True,
                                 output_hidden_states=True, stopping_criteria=StoppingCriteriaList([StopAfterEmb()]))
    states = []
    for i, new in enumerate(out.sequences[:, prompt_len:].tolist()):
        j = new.index(enc.emb_id) if enc.emb_id in new[:budget] else None
        if j is not None:
            states.append(out.hidden_states[j + 1][-1][i, -1].float())
        else:
            states.append(out.hidden_states[budget][-1][i, -1].float() if last_token else None)
    return states


def unit(h: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(h.detach(), dim=-1).numpy()


def with_rule(enc: Encoder, rule: str) -> Encoder:
    base = getattr(enc, "profile", None) or get_profile("micro")
    enc.profile = dataclasses.replace(base, budget_rule=rule)
    assert enc.budget_rule == rule
    return enc


def test_hook_readout_equals_all_layer_hidden_states(taught_encoder):
    inputs = taught_inputs()
    naive = all_layer_readout(taught_encoder, inputs, 128)
    batched = taught_encoder.reason(inputs)
    assert not any(r.forced for r in batched) and all(h is not None for h in naive)
    for r, h in zip(batched, naive):
        assert float(r.vector @ unit(h)) >= 0.9999
    for x in inputs:  # single rows, each against its own naive read-out
        (alone,) = taught_encoder.reason([x])
        (h,) = all_layer_readout(taught_encoder, [x], 128)
        assert float(alone.vector @ unit(h)) >= 0.9999


def test_hook_keeps_one_state_per_row(taught_encoder):
    inputs = taught_inputs()
    taught_encoder.reason(inputs)
    capture = taught_encoder.last_capture
    d = taught_encoder.model.config.text_config.hidden_size
    assert capture.states.shape == (3, d)
    assert capture.retained_bytes() == 3 * (2 * d * 4 + 2)  # step and states (B, D) float32, two (B,) flags
    assert "output_hidden_states" not in taught_encoder._generation_config(8).to_diff_dict()


@pytest.mark.parametrize("rule", ["append_emb", "last_token"])
def test_budget_rule_on_a_mixed_batch(taught_encoder, rule):
    """Two rows finish within the budget, the long one runs out: the profile's rule embeds it."""
    enc = with_rule(taught_encoder, rule)
    inputs = taught_inputs()
    tokens = {x.text: r.tokens for x, r in zip(inputs, enc.reason(inputs))}
    budget = sorted(tokens.values())[1] + 1  # short and medium stop with <emb>, long does not
    results = enc.reason(inputs, max_new_tokens=budget)
    assert [r.forced for r in results] == [False, False, True]
    naive = all_layer_readout(enc, inputs, budget, last_token=rule == "last_token")
    for r, h in zip(results[:2], naive[:2]):
        assert float(r.vector @ unit(h)) >= 0.9999
    long = results[2]
    assert long.tokens == budget
    rows = enc.rows(inputs[2:], direct=False)
    ids = enc.tokenizer.encode(long.rationale, add_special_tokens=False)
    last = unit(emb_states(enc.model, collate(rows, enc.pad_id, [ids]))[0])  # state of the last rationale token
    appended = enc.with_rationale(inputs[2:], [long.rationale])[0]
    if rule == "last_token":
        assert float(long.vector @ unit(naive[2])) >= 0.9999
        assert float(long.vector @ last) >= 0.999
        assert float(long.vector @ appended) < 0.99  # a different vector from the other rule's
        assert not long.prompt.endswith(EMB_TOKEN)
    else:
        assert naive[2] is None
        assert float(long.vector @ appended) >= 0.999
        assert long.prompt.endswith(EMB_TOKEN)
    alone = enc.reason(inputs[2:], max_new_tokens=budget)[0]  # batched == single under either rule
    assert alone.forced and float(alone.vector @ long.vector) >= 0.999


def test_force_budget_runs_every_row_to_the_budget(tiny):
    enc = Encoder(*tiny)
    enc.force_budget = True
    inputs = taught_inputs()
    assert all(not r.forced and r.tokens == 5 for r in enc.reason(inputs, max_new_tokens=6))  # 5 tokens, <emb>
    rows = enc.rows(inputs, direct=False)
    with torch.inference_mode():
        generated = enc._generate(rows, 6)
        vectors = enc._finish(rows, generated)
        again = unit(emb_states(enc.model, collate(rows, enc.pad_id, [ids + [enc.emb_id] for ids, _, _ in generated])))
    assert [len(ids) for ids, _, _ in generated] == [5, 5, 5]
    assert (vectors * again).sum(1).min() >= 0.999  # the in-generate state is <emb>'s after those tokens


@pytest.mark.parametrize("rule", ["append_emb", "last_token"])
def test_compare_shares_the_prompt_and_equals_the_two_passes(taught_encoder, rule):
    """_compare: one forward over prompt + <emb>, then generate from its cache (cut back by two
    tokens): the direct vectors, rationales and reasoning vectors of the two separate passes, on a
    padded batch with a text-only row and a row that runs out of budget, under either budget rule."""
    enc = with_rule(taught_encoder, rule)
    inputs = taught_inputs()
    budget = sorted(r.tokens for r in enc.reason(inputs))[1] + 1  # the long row is forced
    inputs.insert(1, EmbedInput("Represent the given answer.", "a caption with no image", None))
    rows = enc.rows(inputs, direct=False)
    assert [r.ids + [enc.emb_id] for r in rows] == [r.ids for r in enc.rows(inputs, direct=True)]
    seen = []
    direct, generated, vectors = enc._compare(rows, budget, on_direct=seen.append)
    assert len(seen) == 1 and seen[0] is direct
    assert (direct * enc.direct(inputs)).sum(1).min() >= 0.9999
    refs = enc.reason(inputs, max_new_tokens=budget)
    assert [f for _, f, _ in generated] == [r.forced for r in refs] and generated[-1][1]
    assert [enc.tokenizer.decode(ids, skip_special_tokens=True) for ids, _, _ in generated] == [r.rationale for r in refs]
    assert min(float(v @ r.vector) for v, r in zip(vectors, refs)) >= 0.9999


def test_direct_and_stream_gives_the_direct_vector_first_and_errors_to_the_caller(taught_encoder, monkeypatch):
    x = taught_inputs()[1]
    vector, events = taught_encoder.direct_and_stream(x)
    assert float(vector @ taught_encoder.direct([x])[0]) >= 0.9999
    events = list(events)
    assert events[-1].result.rationale == TAUGHT[x.text] == events[-2].text

    def broken(*args, **kwargs):
        raise RuntimeError("forward broke")

    monkeypatch.setattr(taught_encoder.model.model, "forward", broken)
    with pytest.raises(RuntimeError, match="forward broke"):
        taught_encoder.direct_and_stream(x)  # raised here, not left waiting for a vector
