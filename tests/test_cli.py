"""The command line end to end on the tiny checkpoints: ``python -m rge_demo embed`` and ``search``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TAUGHT, colour_image
from rge_demo.__main__ import main
from rge_demo.config import REPO_ROOT
from rge_demo.data.items import Gallery, Item
from rge_demo.embedding.prompts import EMB_TOKEN

HIDDEN = 64  # the test-size micro model


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {**os.environ, "RGE_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}


def cli(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rge_demo", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def red_png(tmp_path):
    path = tmp_path / "red.png"
    colour_image("red").save(path)
    return path


@pytest.mark.slow  # a real process: imports torch and transformers (~10 s of CPU)
def test_embed_json(tiny_dir, red_png, env):
    r = cli("embed", "--model", tiny_dir, "--image", red_png, "--text", "how many?", "--task", "vqa", "--json",
            env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"prompt", "rationale", "tokens", "seconds", "vector"} <= out.keys()
    assert out["prompt"].endswith("<|im_start|>assistant\n" + EMB_TOKEN)
    assert "<|image_pad|>" in out["prompt"] and "how many?" in out["prompt"]
    assert out["rationale"] == "" and out["tokens"] == 0 and out["seconds"] > 0
    vec = np.array(out["vector"])
    assert vec.shape == (HIDDEN,) and abs(np.linalg.norm(vec) - 1) < 1e-5


def test_embed_reason(taught_dir, tmp_path, env, capsys):
    # The taught model writes this rationale for this query, then stops with <emb>.
    image = tmp_path / "red.png"
    colour_image("red").save(image)
    code = main(["embed", "--model", str(taught_dir), "--image", str(image), "--text", "short", "--task", "vqa",
                 "--reason", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["rationale"] == TAUGHT["short"] and not out["forced"] and out["tokens"] > 0
    assert out["prompt"].endswith("<|im_start|>assistant\n" + TAUGHT["short"] + EMB_TOKEN)
    assert len(out["vector"]) == HIDDEN and abs(np.linalg.norm(out["vector"]) - 1) < 1e-5

    code = main(["embed", "--model", str(taught_dir), "--text", "medium", "--instruction", "Represent the given text.",
                 "--reason"])
    text = capsys.readouterr().out
    assert code == 0 and f"rationale: {TAUGHT['medium']}" in text and "vector (64):" in text


@pytest.mark.slow  # a real process: imports torch and transformers (~10 s of CPU)
def test_embed_bad_image_exit_2(tiny_dir, tmp_path, env):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    r = cli("embed", "--model", tiny_dir, "--image", bad, "--text", "x", env=env)
    assert r.returncode == 2
    assert str(bad) in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["missing-image", "unknown-model", "no-emb", "no-query"])
def test_user_errors_exit_2(case, tiny_dir, tmp_path, env, capsys):
    args = ["embed", "--model", str(tiny_dir), "--text", "x"]
    if case == "missing-image":
        args += ["--image", str(tmp_path / "nowhere.png")]
        expect = "nowhere.png"
    elif case == "unknown-model":
        args[2] = str(tmp_path / "no-model-here")
        expect = "no-model-here"
    elif case == "no-emb":
        plain = tmp_path / "plain"
        plain.mkdir()
        for f in tiny_dir.iterdir():
            text_file = f.name in ("tokenizer.json", "tokenizer_config.json")
            (plain / f.name).write_bytes(f.read_bytes().replace(EMB_TOKEN.encode(), b"<nop>") if text_file
                                         else f.read_bytes())
        args[2] = str(plain)
        expect = "not an RGE checkpoint"
    else:
        args = ["embed", "--model", str(tiny_dir)]
        expect = "give a query"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1


def make_gallery(root) -> Gallery:
    root.mkdir()
    items = []
    for colour in ("red", "green", "blue", "yellow"):
        colour_image(colour).save(root / f"{colour}.png")
        items.append(Item(id=f"img-{colour}", image=f"{colour}.png", label=colour))
    items += [Item(id="txt-red", text="a red square", label="red"), Item(id="txt-two", text="two circles")]
    gallery = Gallery(name="colours", root=root, items=items, meta_task="classification",
                      candidate_instruction="Represent the given class label.")
    gallery.save()
    return gallery


@pytest.mark.slow  # a real process: imports torch and transformers (~10 s of CPU)
def test_search_and_cache(tiny_dir, red_png, tmp_path, env, capsys):
    gallery = make_gallery(tmp_path / "gallery")
    args = ("search", "--model", tiny_dir, "--gallery", gallery.root, "--query", "which colour?", "--image", red_png,
            "-k", 3)
    first = cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert "6 items (6 embedded, 0 from cache)" in first.stdout
    hits = [line.split() for line in first.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [h[0] for h in hits] == ["1", "2", "3"]
    scores = [float(h[1]) for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert {h[2] for h in hits} <= {it.id for it in gallery.items}

    # Same model, instruction and files: all from the on-disk cache (in-process: a fresh cache object).
    assert main([*map(str, args), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index"] == {"items": 6, "embedded": 0, "cached": 6}
    assert [h["id"] for h in out["hits"]] == [h[2] for h in hits]
    assert any((tmp_path / "cache").rglob("*.npz"))


def test_search_gallery_without_manifest(tiny_dir, tmp_path, env, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["search", "--model", str(tiny_dir), "--gallery", str(tmp_path / "empty"), "--query", "x"]) == 2
    assert "manifest.json" in capsys.readouterr().err
