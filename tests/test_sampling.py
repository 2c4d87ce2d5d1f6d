"""Sampled rationales (rge_demo.analysis.sampling): determinism, batching, read-outs, benchmark columns, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rge_demo.analysis import sampling
from rge_demo.analysis.eval_tasks import world_tasks
from rge_demo.embedding.encoder import Encoder, ReasonResult

from conftest import TAUGHT, taught_inputs


class CountingGenerate:
    """Counts ``model.generate`` calls and the rows each one got (the real generate still runs)."""

    def __init__(self, model, monkeypatch):
        self.rows: list[int] = []
        real = model.generate

        def generate(*args, **kwargs):
            self.rows.append(int(kwargs["input_ids"].shape[0]))
            return real(*args, **kwargs)

        monkeypatch.setattr(model, "generate", generate)


def test_same_seed_same_samples_other_seed_differs(tiny):
    enc = Encoder(*tiny)
    inputs = taught_inputs()[:2]
    rng_before = torch.get_rng_state()
    a = sampling.sample(enc, inputs, n=4, temperature=1.5, seed=3, max_new_tokens=8)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    b = sampling.sample(enc, inputs, n=4, temperature=1.5, seed=3, max_new_tokens=8)
    c = sampling.sample(enc, inputs, n=4, temperature=1.5, seed=4, max_new_tokens=8)
    assert [len(s) for s in a] == [4, 4]
    texts = lambda runs: [r.rationale for s in runs for r in s]  # noqa: E731
    assert texts(a) == texts(b)
    np.testing.assert_array_equal(np.stack([r.vector for s in a for r in s]), np.stack([r.vector for s in b for r in s]))
    assert texts(a) != texts(c)
    assert len(set(texts(a))) > 1  # a random model at T=1.5 does not write the same thing 8 times
    for r in (r for s in a for r in s):
        assert r.vector.shape == (enc.model.config.text_config.hidden_size,)
        assert abs(float(np.linalg.norm(r.vector)) - 1.0) < 1e-5


def test_one_generate_call_for_all_rows(tiny, monkeypatch):
    enc = Encoder(*tiny)
    counter = CountingGenerate(enc.model, monkeypatch)
    before = enc.forward_passes
    out = sampling.sample(enc, taught_inputs(), n=4, temperature=1.0, seed=0, max_new_tokens=6, batch_size=32)
    assert counter.rows == [12]  # 3 queries x 4 samples in ONE generate
    assert enc.forward_passes - before == 1
    assert len(out) == 3 and all(len(s) == 4 for s in out)
    # a smaller batch splits by whole queries: 8 // 4 = 2 queries per call
    counter.rows.clear()
    sampling.sample(enc, taught_inputs(), n=4, temperature=1.0, seed=0, max_new_tokens=6, batch_size=8)
    assert counter.rows == [8, 4]


def test_cold_samples_are_the_greedy_rationale_and_read_out_like_with_rationale(taught):
    """At a very low temperature the taught model samples its greedy rationale; the vector is the <emb> state."""
    enc = Encoder(*taught)
    inputs = taught_inputs()
    sets = sampling.sample(enc, inputs, n=2, temperature=0.01, seed=0)
    for inp, samples in zip(inputs, sets):
        for r in samples:
            assert r.rationale == TAUGHT[inp.text]
            assert not r.forced
    again = enc.with_rationale(inputs, [TAUGHT[x.text] for x in inputs])  # (3, D)
    for i, samples in enumerate(sets):
        for r in samples:
            assert float(r.vector @ again[i]) > 0.9999


def test_bad_requests_name_the_value(tiny):
    enc = Encoder(*tiny)
    with pytest.raises(sampling.SamplingError, match="temperature"):
        sampling.sample(enc, taught_inputs(), n=2, temperature=0.0)
    with pytest.raises(sampling.SamplingError, match="n=0"):
        sampling.sample(enc, taught_inputs(), n=0)
    for t in (1e-300, float("inf"), float("nan"), 1e300):  # the softmax overflows: inf / nan probabilities
        with pytest.raises(sampling.SamplingError, match=r"temperature must be in \[0.01, 5\]"):
            sampling.sample(enc, taught_inputs(), n=2, temperature=t)
    with pytest.raises(sampling.SamplingError, match="seed must be a whole number in \\[0, 2\\*\\*63\\), got -1"):
        sampling.sample(enc, taught_inputs(), n=2, seed=-1)


def test_pass_at_k_by_hand():
    # n=4 samples, c right: pass@k = 1 - C(n-c, k) / C(n, k)
    assert sampling.pass_at_k(4, 1, 1) == pytest.approx(0.25)  # 1 - 3/4
    assert sampling.pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert sampling.pass_at_k(4, 0, 4) == 0.0
    assert sampling.pass_at_k(4, 3, 2) == 1.0  # only one wrong sample: any 2 include a right one
    assert sampling.pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert sampling.pass_at_k(8, 2, 1) == pytest.approx(0.25)
    with pytest.raises(sampling.SamplingError):
        sampling.pass_at_k(4, 1, 5)
    assert sampling.ks_for(4) == [1, 2, 4]
    assert sampling.ks_for(3, [1, 5]) == [1, 3]


def test_mean_pairwise_cosine_by_hand():
    v = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    # pairs (0,1)=0, (0,2)=1, (1,2)=0 -> 1/3
    assert sampling.mean_pairwise_cosine(v) == pytest.approx(1 / 3)
    assert sampling.mean_pairwise_cosine(v[:1]) is None


def _result(vec, rationale="") -> ReasonResult:
    v = np.asarray(vec, np.float32)
    return ReasonResult(rationale, 3, 0.0, v / np.linalg.norm(v), False, "")


def test_sample_set_read_outs_on_known_vectors():
    # candidates: e0 (right), e1, e2 in 3-D
    pool = np.eye(3, dtype=np.float32)
    samples = [_result([1, 0.5, 0], "x. answer a"), _result([0.2, 1, 0], "answer b"),
               _result([1, 0, 0.9], "answer a"), _result([0, 0, 1], "no answer")]
    # ranks of e0: sample 0 -> cos e0 0.894 > e1 0.447: rank 1; sample 1 -> e1 higher: rank 2;
    # sample 2 -> e0 0.743 > e2 0.669: rank 1; sample 3 -> e0 0 < e2 1, ties with e1 (0): rank 2
    direct = _result([0, 1, 0.1]).vector  # rank 3 (e1 1.0, e2 0.1 > e0 0)
    greedy = _result([1, 0.1, 0], "g. answer a")  # rank 1
    s = sampling.sample_set(samples, direct, greedy, pool, target=0, ks=[1, 2, 4], temperature=0.7, seed=5)
    assert [p.rank for p in s.samples] == [1, 2, 1, 2]
    assert [p.answer for p in s.samples] == ["a", "b", "a", None]
    assert s.samples[0].cosine == pytest.approx(1 / math.sqrt(1.25), abs=1e-6)
    assert s.correct == 2
    assert s.pass_at == {1: pytest.approx(0.5), 2: pytest.approx(1 - 1 / 6), 4: 1.0}
    assert (s.direct.rank, s.greedy.rank, s.oracle_rank) == (3, 1, 1)
    # centroid of the four unit vectors: sum ~ (0.894+0.196+0.743+0, 0.447+0.981+0+0, 0+0+0.669+1)
    # = (1.833, 1.428, 1.669): e0 highest -> rank 1
    assert s.centroid.rank == 1
    assert s.projection["samples"].shape == (4, 2) and s.projection["direct"].shape == (2,)
    d = s.to_dict()
    json.dumps(d)
    assert d["pass_at"]["2"] == pytest.approx(0.833333, abs=1e-5) and d["oracle_rank"] == 1


def test_the_map_does_not_magnify_float_noise():
    """Eight samples equal to the greedy rationale (up to float noise) plot as one spot, not a spread."""
    pool = np.eye(3, dtype=np.float32)
    same = [_result([1, 0.5, 1e-7 * i], "x. answer a") for i in range(8)]
    s = sampling.sample_set(same, _result([1, 0.5, 0]).vector, _result([1, 0.5, 0], "x. answer a"), pool, target=0,
                            ks=[1], temperature=1.0, seed=0)
    layout = sampling.samples_figure(s).layout
    for axis in (layout.xaxis, layout.yaxis):
        assert axis.range[1] - axis.range[0] >= sampling.MIN_SPAN  # autoscaled, 1e-7 would fill the plot
    wide = sampling.samples_figure(sampling.sample_set(
        [_result([1, 0, 0]), _result([0, 1, 0]), _result([0, 0, 1])], pool[0], _result([1, 1, 0]), pool, target=0,
        ks=[1], temperature=1.0, seed=0)).layout
    assert wide.xaxis.range[1] - wide.xaxis.range[0] > 1  # real spread: the axes follow the points


def test_points_on_one_spot_share_one_label():
    """QA: greedy and centroid on one spot printed their labels over each other ("cgreedyd")."""
    pool = np.eye(3, dtype=np.float32)
    same = [_result([1, 0.5, 1e-7 * i], "x. answer a") for i in range(8)]
    s = sampling.sample_set(same, pool[1], _result([1, 0.5, 0], "x. answer a"), pool, target=0,
                            ks=[1], temperature=1.0, seed=0)
    traces = {t.name.split(" ")[0]: t for t in sampling.samples_figure(s).data if t.text}
    texts = {k: t.text[0] for k, t in traces.items()}
    assert texts == {"direct": "direct", "greedy": "greedy = centroid = 8 samples", "centroid": ""}  # all under it
    # a label near the plot's right edge grows inwards (QA: "greedy = centro", cut at the edge)
    assert traces["greedy"].textposition == "top left" and traces["direct"].textposition == "top right"
    spread = sampling.sample_set([_result([1, 0, 0]), _result([0, 1, 0]), _result([0, 0, 1])], pool[0],
                                 _result([1, 1, 0]), pool, target=0, ks=[1], temperature=1.0, seed=0)
    texts = {t.name.split(" ")[0]: t.text[0] for t in sampling.samples_figure(spread).data if t.text}
    assert texts == {"direct": "direct = 1 sample", "greedy": "greedy", "centroid": "centroid"}  # apart: a label
    # each; the first sample is the direct vector itself, so it sits under the direct marker


def test_sampling_columns_over_world_tasks(tiny):
    enc = Encoder(*tiny)
    tasks = world_tasks(["count"], splits=("ind",), n=2)
    records = sampling.evaluate_sampling(enc, tasks, n=3, temperature=1.0, seed=0, ks=[1, 2], max_new_tokens=5)
    assert len(records) == 2 and {r["dataset"] for r in records} == {"count/ind"}
    table = sampling.sampling_table(records)
    assert set(table) == {"overall", "count/ind"}
    row = table["count/ind"]
    for key in ("direct_p1", "reason_p1", "oracle_p1", "sample_p1", "pass@1", "pass@2", "pass@3", "centroid_p1",
                "spread", "stated_right"):
        assert key in row
    # the oracle is per query the better of direct and greedy; pass@1 is the mean share of right samples
    assert row["oracle_p1"] >= max(row["direct_p1"], row["reason_p1"])
    assert row["pass@1"] == pytest.approx(row["sample_p1"])
    assert row["pass@1"] <= row["pass@2"] <= row["pass@3"]
    expected = np.mean([min(r["direct"]["rank"], r["greedy"]["rank"]) == 1 for r in records])
    assert row["oracle_p1"] == pytest.approx(expected)
    assert sampling.sampling_columns(enc, tasks, n=3, temperature=1.0, seed=0, ks=[1, 2],
                                     max_new_tokens=5) == table  # seeded: the same columns again


def test_sample_cli_world_json(tiny_dir, tmp_path, monkeypatch, capsys):
    from rge_demo.__main__ import main

    monkeypatch.setenv("RGE_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["sample", "--model", str(tiny_dir), "--world", "count", "--limit", "2", "-n", "2",
                 "--temperature", "1.0", "--max-new-tokens", "4", "--k", "1"])
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    for r in lines[:2]:
        assert r["n"] == 2 and len(r["samples"]) == 2 and r["dataset"] == "count/ind"
        assert set(r["samples"][0]) >= {"rank", "cosine", "rationale", "answer"}
        assert len(r["projection"]["samples"]) == 2
    assert set(lines[2]["summary"]["overall"]) >= {"pass@1", "pass@2", "centroid_p1", "oracle_p1"}
    assert main(["sample", "--model", str(tiny_dir), "--world", "nope"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["sample", "--model", str(tiny_dir), "--world", "count", "--temperature", "0"]) == 2
    assert "error: the temperature must be in [0.01, 5]" in capsys.readouterr().err


def test_sample_cli_gallery_json(tiny_dir, tmp_path, monkeypatch, capsys):
    from conftest import colour_image

    from rge_demo.__main__ import main
    from rge_demo.data.items import Gallery, Item

    monkeypatch.setenv("RGE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "gallery"
    root.mkdir()
    for colour in ("red", "green", "blue"):
        colour_image(colour).save(root / f"{colour}.png")
    Gallery(name="colours", root=root, meta_task="classification", candidate_instruction="Represent the given class label.",
            items=[Item(id=f"img-{c}", image=f"{c}.png", label=c) for c in ("red", "green", "blue")]).save()
    colour_image("red").save(tmp_path / "q.png")
    args = ["sample", "--model", str(tiny_dir), "--gallery", str(root), "--image", str(tmp_path / "q.png"),
            "--text", "which colour?", "-n", "3", "--max-new-tokens", "4", "--seed", "1"]
    assert main([*args, "--target", "img-red"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target_id"] == "img-red" and out["target_label"] == "red" and out["n"] == 3
    assert all(1 <= s["rank"] <= 3 for s in out["samples"])
    assert out["oracle_rank"] == min(out["direct"]["rank"], out["greedy"]["rank"])
    assert main([*args, "--target", "img-purple"]) == 2
    assert "img-purple" in capsys.readouterr().err
