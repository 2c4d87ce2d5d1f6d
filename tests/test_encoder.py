import numpy as np
import pytest

from conftest import TAUGHT, colour_image, taught_inputs
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.prompts import EMB_TOKEN, EmbedInput, from_mmeb_text, instruction_for, prompt_text


def test_prompt_follows_reference_layout(tiny):
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


def test_with_rationale_matches_generated(taught_encoder):
    inputs = taught_inputs()
    generated = taught_encoder.reason(inputs)
    given = taught_encoder.with_rationale(inputs, [r.rationale for r in generated])
    assert (given * np.stack([r.vector for r in generated])).sum(1).min() >= 0.999
