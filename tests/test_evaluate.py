"""Evaluation on the world's test splits and on an MMEB-eval layout built in tmp_path (tiny real model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rge_demo.analysis.evaluate import (EvalDataError, compare_runs, evaluate, load_mmeb, load_run, mmeb_group,
                                        world_tasks)
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.index import EmbeddingCache
from rge_demo.embedding.prompts import MMEB_IMAGE_PLACEHOLDER, prompt_text
from rge_demo.__main__ import main as cli_main

COLOURS = ("red", "green", "blue")


@pytest.fixture(scope="module")
def encoder(tiny):
    return Encoder(*tiny)


@pytest.fixture(scope="module")
def tasks():
    return world_tasks(["count", "ground"], ("ind", "ood"), n=3)


def naive_ranks(encoder, task, mode="direct"):
    """Reference: full score vectors with numpy, rank = 1 + #candidates scoring above the target."""
    cands = encoder.direct([c.item.to_input() for c in task.candidates])  # (N, D)
    queries = encoder.direct([q.item.to_input() for q in task.queries])  # (Q, D)
    ranks = []
    for q, v in zip(task.queries, queries):
        pool = list(range(len(task.candidates))) if q.candidates is None else q.candidates
        scores = cands[pool] @ v
        ranks.append(1 + int((scores > scores[q.target]).sum()))
    return ranks


def check_cases(run, tasks):
    assert len(run.cases) == sum(len(t.queries) for t in tasks)
    for c in run.cases:
        assert 1 <= c["rank"] <= c["n_candidates"]
        assert c["correct"] == (c["rank"] == 1)
        scores = [h["score"] for h in c["topk"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == min(5, c["n_candidates"])
        assert (c["target_id"] in [h["id"] for h in c["topk"]]) == (c["rank"] <= 5)
    metrics = run.summary()["metrics"]
    for t in tasks:
        ranks = np.array([c["rank"] for c in run.cases if c["dataset"] == t.name])
        assert metrics[f"task={t.name}"]["p@1"] == pytest.approx(np.mean(ranks == 1))
        assert metrics[f"task={t.name}"]["recall@5"] == pytest.approx(np.mean(ranks <= 5))
    assert metrics["overall"]["n"] == len(run.cases)


@pytest.mark.parametrize("mode", ["reason", "direct"])
def test_world_eval_both_modes(encoder, tasks, mode, tmp_path):
    seen = []
    run = evaluate(encoder, tasks, mode=mode, batch_size=4, max_new_tokens=3,
                   progress=lambda done, total: seen.append((done, total)))
    check_cases(run, tasks)
    assert seen[-1][0] == seen[-1][1] == sum(len(t.queries) + len(t.candidates) for t in tasks)
    summary = run.summary()
    assert summary["mode"] == mode and summary["n"] == 12
    assert {"split=ind", "split=ood", "meta_task=vqa", "meta_task=grounding"} <= summary["metrics"].keys()
    for c in run.cases:
        assert c["dataset"] == f"{c['task']}/{c['split']}" and c["oracle_rationale"]
        assert c["meta"]["question"] == c["text"] and "objects" in c["meta"]
        assert c["hallucinations"] is not None
        if mode == "direct":
            assert c["rationale"] == "" and c["tokens"] == 0 and not c["forced"]
        else:
            assert c["tokens"] <= 3
    if mode == "direct":
        for t in tasks:
            assert [c["rank"] for c in run.cases if c["dataset"] == t.name] == naive_ranks(encoder, t)

    out = run.save(tmp_path / "run")
    for name in ("cases.jsonl", "summary.json", "table.md"):
        assert (out / name).is_file()
    assert all((out / c["image"]).is_file() for c in run.cases)
    table = (out / "table.md").read_text()
    assert "count/ind" in table and "**OOD** (avg)" in table and "**Overall** (avg)" in table
    back = load_run(out)
    assert back.cases == json.loads(json.dumps(run.cases))
    assert back.summary() == json.loads((out / "summary.json").read_text())


def test_cache_and_compare(encoder, tasks, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    first = evaluate(encoder, tasks[:2], mode="direct", cache=cache, fingerprint="tiny")
    cache.clear_memory()
    calls = encoder.forward_passes
    second = evaluate(encoder, tasks[:2], mode="direct", cache=cache, fingerprint="tiny", batch_size=64)
    assert encoder.forward_passes - calls == 2  # one query batch per task, no candidate batch
    assert [c["rank"] for c in first.cases] == [c["rank"] for c in second.cases]
    oracle = evaluate(encoder, tasks[:2], mode="oracle")
    assert all(c["rationale"] == c["oracle_rationale"] and c["hallucinations"] == [] for c in oracle.cases)
    table = compare_runs({"direct": first.summary(), "oracle": oracle.summary()})
    assert "direct (P@1)" in table and "oracle (P@1)" in table and "count/ind" in table


def test_world_task_errors():
    with pytest.raises(KeyError, match="unknown task"):
        world_tasks(["nope"])
    with pytest.raises(ValueError, match="split"):
        world_tasks(["count"], ("train",))


# ------------------------------------------------------------------------------------------ MMEB
def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)


def make_mmeb(root: Path) -> Path:
    """Two subsets in the MMEB-eval layout: image -> class label (OOD), caption -> image (IND)."""
    images = root / "images"
    for sub in ("ImageNet-A", "MSCOCO_t2i"):
        (images / sub).mkdir(parents=True)
    cls_rows, t2i_rows = [], []
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (40 + 8 * i, 32), colour).save(images / "ImageNet-A" / f"q{i}.png")
        Image.new("RGB", (28, 28 + 8 * i), colour).save(images / "MSCOCO_t2i" / f"{colour}.png")
        order = [colour] + [c for c in COLOURS if c != colour]  # the right candidate first
        cls_rows.append({"qry_text": f"{MMEB_IMAGE_PLACEHOLDER}\nRepresent the given image for classification",
                         "qry_img_path": f"ImageNet-A/q{i}.png", "tgt_text": order, "tgt_img_path": [""] * 3})
        t2i_rows.append({"qry_text": f"Find me an everyday image that matches the given caption: a {colour} square",
                         "qry_img_path": "",
                         "tgt_text": [f"{MMEB_IMAGE_PLACEHOLDER}\nRepresent the given image."] * 3,
                         "tgt_img_path": [f"MSCOCO_t2i/{c}.png" for c in order]})
    write_parquet(root / "ImageNet-A" / "test-00000-of-00001.parquet", cls_rows)
    write_parquet(root / "MSCOCO_t2i" / "test-00000-of-00001.parquet", t2i_rows)
    return root


@pytest.fixture()
def mmeb(tmp_path):
    return make_mmeb(tmp_path / "MMEB-eval")


def test_load_mmeb(mmeb, tiny):
    tasks = {t.name: t for t in load_mmeb(mmeb)}
    assert (tasks["ImageNet-A"].meta_task, tasks["ImageNet-A"].split) == ("classification", "ood")
    assert (tasks["MSCOCO_t2i"].meta_task, tasks["MSCOCO_t2i"].split) == ("retrieval", "ind")
    assert mmeb_group("SomethingNew") == ("unknown", "ind")
    cls = tasks["ImageNet-A"]
    assert len(cls.candidates) == 3  # shared labels embedded once
    for q, colour in zip(cls.queries, COLOURS):
        assert cls.candidates[q.candidate_index(cls)].label == colour
        inp = q.item.to_input()
        assert inp.image is not None and inp.image.mode == "RGB"
        assert MMEB_IMAGE_PLACEHOLDER not in inp.text and inp.text == "Represent the given image for classification"
        prompt = prompt_text(tiny[1], inp, direct=False)
        assert MMEB_IMAGE_PLACEHOLDER not in prompt and "<|vision_start|>" in prompt
    t2i = tasks["MSCOCO_t2i"]
    assert all(c.item.image_path is not None and c.item.text == "Represent the given image." for c in t2i.candidates)
    assert all(q.item.to_input().image is None for q in t2i.queries)
    assert [t.name for t in load_mmeb(mmeb, subsets=["MSCOCO_t2i"], limit=2)] == ["MSCOCO_t2i"]
    assert len(load_mmeb(mmeb, limit=2)[0].queries) == 2


def test_mmeb_eval_end_to_end(mmeb, encoder, tmp_path):
    tasks = load_mmeb(mmeb)
    for mode in ("direct", "reason"):
        run = evaluate(encoder, tasks, mode=mode, max_new_tokens=2)
        check_cases(run, tasks)
        assert all(c["n_candidates"] == 3 and c["hallucinations"] is None for c in run.cases)
        assert all(MMEB_IMAGE_PLACEHOLDER not in c["text"] for c in run.cases)
        assert [c["image"] is not None for c in run.cases] == [True] * 3 + [False] * 3
        if mode == "direct":
            ranks = [r for t in tasks for r in naive_ranks(encoder, t)]
            assert [c["rank"] for c in run.cases] == ranks
    run.save(tmp_path / "run")
    assert "ImageNet-A" in (tmp_path / "run" / "table.md").read_text()


def test_mmeb_bad_inputs(mmeb, tmp_path):
    empty = tmp_path / "empty"
    (empty / "ImageNet-A").mkdir(parents=True)
    with pytest.raises(EvalDataError, match="test-\\*.parquet"):
        load_mmeb(empty)
    with pytest.raises(EvalDataError, match="no such MMEB folder"):
        load_mmeb(tmp_path / "missing")
    with pytest.raises(EvalDataError, match="subset 'VizWiz'"):
        load_mmeb(mmeb, subsets=["VizWiz"])
    bad = tmp_path / "bad" / "GQA" / "test-00000-of-00001.parquet"
    write_parquet(bad, [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a", "b"]}])
    with pytest.raises(EvalDataError, match=r"test-00000-of-00001\.parquet: missing column 'tgt_img_path'"):
        load_mmeb(bad.parent.parent)
    (mmeb / "images" / "MSCOCO_t2i" / "red.png").unlink()
    with pytest.raises(EvalDataError, match="red.png"):
        load_mmeb(mmeb)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_world_and_mmeb(tiny_dir, mmeb, tmp_path, capsys):
    out = tmp_path / "world-run"
    assert cli_main(["eval", "--model", str(tiny_dir), "--mode", "direct", "--split", "ood", "--tasks", "count",
                          "--n", "2", "--out", str(out), "--no-cache", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "count/ood" in printed and (out / "summary.json").is_file() and load_run(out).summary()["n"] == 2
    out = tmp_path / "mmeb-run"
    assert cli_main(["eval", "--model", str(tiny_dir), "--mode", "reason", "--mmeb", str(mmeb), "--limit", "2",
                          "--max-new-tokens", "2", "--out", str(out), "--no-cache", "--device", "cpu"]) == 0
    assert load_run(out).summary()["n"] == 4


@pytest.mark.parametrize("argv, message", [
    (["--model", "{tmp}/no-model"], "no such model folder"),
    (["--tasks", "count,nope"], "unknown task"),
    (["--n", "0"], "--n must be >= 1"),
    (["--mmeb", "{tmp}"], "test-*.parquet"),
    (["--mmeb", "{mmeb}", "--subsets", "MSCOCO_t2i", "--split", "ood"], "no MMEB subsets in split 'ood'"),
    (["--mmeb", "{bad}"], "missing column 'tgt_img_path'"),
])
def test_cli_errors(argv, message, tiny_dir, mmeb, tmp_path, capsys):
    bad = tmp_path / "bad"
    write_parquet(bad / "GQA" / "test-00000-of-00001.parquet", [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a"]}])
    argv = [a.format(tmp=tmp_path / "x", mmeb=mmeb, bad=bad) for a in argv]
    (tmp_path / "x").mkdir()
    if "--model" not in argv:
        argv += ["--model", str(tiny_dir)]
    assert cli_main(["eval", *argv, "--no-cache", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err
    if message.startswith("missing column"):  # names the file and the column
        assert "GQA" in err and "test-00000-of-00001.parquet" in err


def test_identical_candidates_share_one_embedding_so_their_tie_is_exact(encoder, tmp_path):
    """QA: a gallery holding "two" for two tasks ranked its right answer 2nd in Failures (the other "two",
    embedded in another batch, scored higher by float noise) and =1st in Compare."""
    from rge_demo.analysis.eval_tasks import EvalCandidate, EvalItem, EvalQuery, EvalTask
    from rge_demo.analysis.evaluate import embed_candidates

    texts = ["two", "a much longer caption that pads its batch", "two", "one"]
    cands = [EvalCandidate(f"c{i}", t, EvalItem(text=t)) for i, t in enumerate(texts)]
    plain = np.stack([encoder.direct([c.item.to_input() for c in cands[s:s + 2]]) for s in (0, 2)]).reshape(4, -1)
    assert not np.array_equal(plain[0], plain[2])  # batched apart, the two "two"s differ by noise
    cache = EmbeddingCache(tmp_path / "cache")
    matrix = embed_candidates(encoder, cands, 2, cache, "fp", lambda done: None)
    assert np.array_equal(matrix[0], matrix[2]) and np.allclose(matrix[0], plain[0], atol=1e-5)
    task = EvalTask("dup", "vqa", "ind", [EvalQuery("q", EvalItem(text="two"), target=2)], cands, task="count")
    run = evaluate(encoder, [task], mode="direct", batch_size=2, cache=EmbeddingCache(tmp_path / "c2"),
                   fingerprint="fp")
    assert run.cases[0]["rank"] == 1  # the tie favours the right answer, whichever "two" it is
