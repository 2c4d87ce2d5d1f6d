"""The command line end to end on the tiny checkpoints: ``python -m rge_demo embed`` and ``search``, and the
error format and exit codes every command shares."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import TAUGHT, colour_image
from rge_demo.__main__ import main
from rge_demo.config import REPO_ROOT
from rge_demo.data.items import Gallery, Item
from rge_demo.embedding.prompts import EMB_TOKEN
from test_evaluate import make_mmeb

HIDDEN = 64  # the test-size micro model


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {**os.environ, "RGE_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}


def cli(*args, env) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; ``args`` may hold bytes (an argv that is not UTF-8)."""
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    r = subprocess.run([sys.executable, "-m", "rge_demo", *argv], cwd=REPO_ROOT, env=env, capture_output=True,
                       timeout=120)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode("utf-8", "backslashreplace"),
                                       r.stderr.decode("utf-8", "backslashreplace"))


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
    assert out["index"] == {"items": 6, "embedded": 0, "identical": 0, "cached": 6}
    assert [h["id"] for h in out["hits"]] == [h[2] for h in hits]
    assert any((tmp_path / "cache").rglob("*.npz"))


def test_search_gallery_without_manifest(tiny_dir, tmp_path, env, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["search", "--model", str(tiny_dir), "--gallery", str(tmp_path / "empty"), "--query", "x"]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_search_refuses_an_empty_gallery_and_notes_a_k_past_its_size(tiny_dir, tmp_path, capsys):
    empty = Gallery(name="empty", root=tmp_path / "empty", items=[], meta_task="vqa")
    empty.save()
    assert main(["search", "--model", str(tiny_dir), "--gallery", str(empty.root), "--text", "x"]) == 2
    assert_user_error(2, capsys.readouterr().err, "the gallery has no items to rank")
    gallery = make_gallery(tmp_path / "gallery")
    assert main(["search", "--model", str(tiny_dir), "--gallery", str(gallery.root), "--text", "x", "-k", "50",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["hits"]) == 6
    assert captured.err.strip() == "note: the gallery has 6 items; all of them are listed (-k 50)"


# ------------------------------------------------------------------ one error format, one set of exit codes
# A user error is exit code 2 and one line on stderr, "error: <sentence>", with no traceback; the
# same for every command (rge_demo/cli/common.py).


def assert_user_error(code: int, stderr: str, *words: str) -> str:
    """Exit code 2, one line ``error: ...`` holding every one of ``words``, no traceback; the line."""
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr)
    assert "Traceback" not in stderr
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


def broken_copy(tiny_dir, tmp_path, damage: str):
    """A copy of the tiny checkpoint with ``model.safetensors`` cut in half or ``config.json`` not JSON."""
    folder = shutil.copytree(tiny_dir, tmp_path / f"broken-{damage}")
    if damage == "truncated":
        weights = folder / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        return folder, ("model.safetensors", "truncated")
    (folder / "config.json").write_text('{"architectures": ["Qwen2_5_VLForConditionalGeneration"],\n  "hidden_size": ')
    return folder, ("config.json", "not valid JSON")


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("-k", "0", "-k must be >= 1, got 0"),
    ("-k", "-2", "-k must be >= 1, got -2"),
])
def test_search_nonpositive_count_in_a_real_process(flag, value, message, tmp_path, env):
    gallery = make_gallery(tmp_path / "gallery")
    r = cli("search", "--gallery", gallery.root, "--text", "x", flag, value, env=env)
    assert_user_error(r.returncode, r.stderr, message)
    assert r.stdout == ""


# Every count flag of every command refuses a value below its minimum, and a command refuses flags that do not go
# together, before any model loads.
NONPOSITIVE = [
    (["embed", "--text", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["search", "--gallery", "{gallery}", "--text", "x", "--batch-size", "-1"], "--batch-size must be >= 1"),
    (["search", "--gallery", "{gallery}", "--text", "x", "-k", "0"], "-k must be >= 1"),
    (["search", "--gallery", "{gallery}", "--text", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["prompts", "--mmeb", "{tmp}", "--limit", "0"], "--limit must be >= 1"),
    (["sample", "--world", "count", "-n", "0"], "-n must be >= 1"),
    (["sample", "--world", "count", "--limit", "0"], "--limit must be >= 1"),
    (["sample", "--world", "count", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["sample", "--world", "count", "--k", "0,2"], "pass@k needs k >= 1, got 0"),  # SamplingError: an RGEUserError
    (["eval", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["eval", "--queries", "0"], "--n must be >= 1"),
    (["eval", "--mmeb", "{tmp}", "--limit", "0"], "--limit must be >= 1"),
    (["eval", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["train", "--steps", "0"], "--steps must be >= 1"),
    (["train", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["train", "--threads", "-1"], "--threads must be >= 0"),
    (["train", "--cold-start-steps", "-1"], "--cold-start-steps must be >= 0"),
    (["sample", "--world", ","], "--world names nothing (got ','): give one or more values"),
    (["sample", "--world", "count", "--k", " , "], "--k names nothing"),
    (["eval", "--tasks", ","], "--tasks names nothing"),
    (["prompts", "--mmeb", "{tmp}", "--subsets", ","], "--subsets names nothing"),
    (["embed", "--text", "x", "--task", "vqa", "--instruction", "y"], "give --instruction or --task, not both"),
    (["search", "--gallery", "{gallery}", "--text", "x", "--task", "vqa", "--instruction", "y"],
     "give --instruction or --task, not both"),
    (["eval", "--tasks", "count", "--queries", "1", "--device", "bogus"], "device 'bogus' is not a device: use auto, cpu, cuda, cuda:N or mps"),
    # a flag the chosen mode would ignore without a word
    (["sample", "--gallery", "{gallery}", "--target", "a", "--text", "x", "--split", "ood"],
     "--split is for --world, not --gallery"),
    (["sample", "--world", "count", "--text", "x", "--target", "a"], "--text, --target are for --gallery, not --world"),
    (["search", "--gallery", "{gallery}", "--text", "a", "--query", "b"], "give the query text once: --text or --query"),
    (["eval", "--mmeb", "{tmp}", "--queries", "3"], "--n/--queries is for the world; use --limit with --mmeb"),
    (["eval", "--mmeb", "{tmp}", "--wordings"], "--wordings is for the world, not --mmeb"),
    (["train", "--stage", "rge", "--reasoner", "{tmp}"], "reasoner is for stage embedder; this run's stage is rge"),
    (["train", "--stage", "embedder", "--embedder", "{tmp}"], "embedder is for stage eg-rl; this run's stage is embedder"),
    (["train", "--stage", "baseline", "--group-size", "3", "--kl-beta", "0"],
     "--group-size, --kl-beta are for stage eg-rl; this run's stage is baseline"),
    # sizes that would exhaust memory (QA: the process was killed, no message)
    (["sample", "--world", "count", "-n", "100000"], "at most 256 samples per query"),
    (["sample", "--world", "count", "--limit", "100000"], "--limit must be <= 10,000, got 100,000"),
    (["eval", "--queries", "100000000"], "--n must be <= 10,000, got 100,000,000"),
    (["eval", "--batch-size", "5000"], "--batch-size must be <= 1,024"),
    (["search", "--gallery", "{gallery}", "--text", "x", "--batch-size", "5000"], "--batch-size must be <= 1,024"),
    (["train", "--init", "test", "--batch-size", "100000"], "batch_size must be <= 1024"),
    # an empty path is the working directory (QA: make-galleries --out "" replaced the README there)
    (["make-galleries", "--out", ""], "--out is empty"),
    (["eval", "--tasks", "count", "--out", " "], "--out is empty"),
    (["train", "--output-dir", ""], "--output-dir is empty"),
    (["train", "--data", ""], "--data is empty"),
    # a run folder is new or empty, checked before the model loads
    (["eval", "--tasks", "count", "--queries", "1", "--out", "{gallery}"], "the folder is not empty"),
    (["eval", "--tasks", "count", "--queries", "1", "--out", "{gallery}/manifest.json"], "is a file"),
    # a value the run would ignore, or contradict, without a word
    (["eval", "--tasks", "count", "--temperature", "2"], "--temperature is for --samples"),
    (["sample", "--world", "count", "-n", "2", "--k", "1,100"], "--k 100: pass@k needs k <= n"),
    (["prompts", "--mmeb", "{tmp}", "--side", "candidate"], "--side is for one item"),
    (["embed", "--text", "x", "--side", "candidate", "--reason"], "--side candidate embeds directly"),
    (["embed", "--text", "   "], "--text holds only whitespace"),
    (["embed", "--text", "x", "--task", "nope"], "has no task 'nope'; its tasks: majority_shape, count"),
]


@pytest.mark.parametrize("argv, message", NONPOSITIVE, ids=[" ".join(a[:1] + a[-2:]) for a, _ in NONPOSITIVE])
def test_nonpositive_counts_exit_2(argv, message, tiny_dir, tmp_path, env, capsys):
    gallery = make_gallery(tmp_path / "gallery")
    argv = [a.format(gallery=gallery.root, tmp=tmp_path) for a in argv]
    if argv[0] in ("embed", "search", "sample", "eval"):
        argv += ["--model", str(tiny_dir)]
    assert_user_error(main(argv), capsys.readouterr().err, message)
    assert not any(tmp_path.glob("train*")) and not (tmp_path / "README.md").exists()


def test_every_count_flag_has_a_minimum():
    """A new ``--batch-size``/``--limit``/``-k``/... flag without ``minimum=`` fails here."""
    import argparse

    from rge_demo.cli.common import build_parser

    counts = {"batch_size", "limit", "k", "n", "steps", "cold_start_steps", "max_new_tokens", "threads"}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, parser in sub.choices.items():
        minimums = {dest for dest, _, low, _ in parser.get_default("_bounds") if low is not None}
        for action in parser._actions:
            if action.dest in counts and action.type is int:
                assert action.dest in minimums, f"{name} {action.option_strings}: no minimum"
                checked += 1
    assert checked >= 15


@pytest.mark.parametrize("where", ["text", "image", "flag=value"])
def test_non_utf8_argument_in_a_real_process(where, tiny_dir, tmp_path, env):
    if where == "text":
        args = ["embed", "--model", tiny_dir, "--text", b"caf\xe9 \xff"]
        words = ["--text", "not valid UTF-8", r"\xff"]
    elif where == "image":
        args = ["embed", "--model", tiny_dir, "--image", os.fsencode(tmp_path) + b"/\xff.png", "--text", "x"]
        words = ["--image", "not valid UTF-8"]
    else:
        args = ["search", b"--gallery=\xfe\xff", "--text", "x"]
        words = ["--gallery", "not valid UTF-8"]
    r = cli(*args, env=env)
    assert_user_error(r.returncode, r.stderr, *words)
    assert r.stdout == ""


@pytest.mark.slow  # real processes that import torch and transformers (~10 s of CPU each)
@pytest.mark.parametrize("damage", ["truncated", "config-not-json"])
def test_broken_model_folder_in_a_real_process(damage, tiny_dir, tmp_path, env):
    folder, (name, words) = broken_copy(tiny_dir, tmp_path, damage)
    r = cli("embed", "--model", folder, "--text", "x", env=env)
    line = assert_user_error(r.returncode, r.stderr, name, words)
    assert str(folder) in line and r.stdout == ""


@pytest.mark.parametrize("damage", ["truncated", "config-not-json"])
@pytest.mark.parametrize("command", ["embed", "search", "prompts", "sample", "eval"])
def test_broken_model_folder_exit_2(command, damage, tiny_dir, tmp_path, env, capsys):
    folder, (name, words) = broken_copy(tiny_dir, tmp_path, damage)
    gallery = make_gallery(tmp_path / "gallery")
    argv = {"embed": ["--text", "x"], "search": ["--gallery", str(gallery.root), "--text", "x"],
            "prompts": ["--text", "x"], "sample": ["--world", "count", "--limit", "1", "-n", "1"],
            "eval": ["--tasks", "count", "--n", "1", "--out", str(tmp_path / "out")]}[command]
    code = main([command, "--model", str(folder), *argv])
    assert_user_error(code, capsys.readouterr().err, str(folder / name), words)


@pytest.mark.parametrize("case", ["image", "gallery"])
def test_missing_file_in_a_real_process(case, tiny_dir, tmp_path, env):
    missing = tmp_path / f"no-such-{case}"
    if case == "image":
        r = cli("embed", "--model", tiny_dir, "--image", missing, "--text", "x", env=env)
    else:
        r = cli("search", "--model", tiny_dir, "--gallery", missing, "--text", "x", env=env)
    assert_user_error(r.returncode, r.stderr, str(missing))
    assert r.stdout == ""


@pytest.mark.slow  # a real process that imports the trainer (torch)
def test_missing_train_config_in_a_real_process(tmp_path, env):
    missing = tmp_path / "no-such-config.json"
    r = cli("train", "--config", missing, env=env)
    assert_user_error(r.returncode, r.stderr, str(missing), "no such config file")


MISSING = [
    (["embed", "--model", "{tiny}", "--image", "{missing}", "--text", "x"], "file not found"),
    (["embed", "--model", "{missing}", "--text", "x"], "not a local folder"),
    (["search", "--model", "{tiny}", "--gallery", "{missing}", "--text", "x"], "no such gallery folder"),
    (["prompts", "--model", "{tiny}", "--mmeb", "{missing}"], "no such MMEB folder"),
    (["sample", "--model", "{tiny}", "--gallery", "{missing}", "--target", "a", "--text", "x"], "no such gallery"),
    (["eval", "--model", "{missing}", "--tasks", "count", "--n", "1"], "no such model folder"),
    (["eval", "--model", "{tiny}", "--mmeb", "{missing}"], "no such MMEB folder"),
    (["train", "--config", "{missing}"], "no such config file"),
    (["train", "--data", "{missing}", "--init", "{tiny}", "--stage", "baseline", "--steps", "1", "--batch-size", "2",
      "--output-dir", "{out}"], "no such pairs file"),
]


@pytest.mark.parametrize("argv, message", MISSING, ids=[f"{a[0]}-{a[a.index('{missing}') - 1]}" for a, _ in MISSING])
def test_missing_file_exit_2(argv, message, tiny_dir, tmp_path, env, capsys):
    missing = tmp_path / "nowhere"
    argv = [a.format(tiny=tiny_dir, missing=missing, out=tmp_path / "out") for a in argv]
    assert_user_error(main(argv), capsys.readouterr().err, str(missing), message)


def test_bad_command_line_is_one_line(env, capsys):
    """argparse's own errors take the same format: one line, exit code 2."""
    r = cli("search", "--batch-size", "many", env=env)
    assert_user_error(r.returncode, r.stderr, "--batch-size", "invalid int value: 'many'", "search --help")
    assert main(["no-such-command"]) == 2
    assert_user_error(2, capsys.readouterr().err, "invalid choice: 'no-such-command'")
    assert main(["--help"]) == 0 and "make-galleries" in capsys.readouterr().out


def test_user_error_family():
    """Every user-facing error of the library is an RGEUserError (one line, exit 2); bugs are not."""
    import importlib

    from rge_demo.cli.common import UsageError, user_message
    from rge_demo.errors import RGEUserError

    for module, name in [("rge_demo.config", "SettingsError"), ("rge_demo.models.loading", "ModelError"),
                         ("rge_demo.embedding.encoder", "NotAnRGEModel"), ("rge_demo.embedding.profiles", "ProfileError"),
                         ("rge_demo.data.images", "ImageError"), ("rge_demo.data.items", "ManifestError"),
                         ("rge_demo.analysis.eval_tasks", "EvalDataError"), ("rge_demo.training.config", "ConfigError"),
                         ("rge_demo.training.data", "DataError"), ("rge_demo.data.safezip", "UploadError"),
                         ("rge_demo.app.user_galleries", "GalleryError")]:
        assert issubclass(getattr(importlib.import_module(module), name), RGEUserError), name
    assert issubclass(UsageError, RGEUserError)
    assert user_message(UsageError("line one\n  line two\n")) == "line one; line two"  # always one line
    from rge_demo.analysis.sampling import SamplingError
    assert user_message(SamplingError("k")) == "k"
    assert user_message(FileNotFoundError(2, "No such file or directory", "/x")) == "/x: No such file or directory"
    assert user_message(KeyError("a bug")) is None and user_message(TypeError("a bug")) is None


def test_one_entry_point():
    """``python -m rge_demo`` and the ``rge-demo`` script are the same function."""
    import importlib
    import tomllib

    import rge_demo.__main__
    import rge_demo.cli

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["rge-demo"].split(":")
    assert getattr(importlib.import_module(module), func) is rge_demo.cli.main is rge_demo.__main__.main


def test_one_progress_bar(capsys):
    """The CLI's only progress bar (tqdm on stderr); no command module makes its own."""
    from rge_demo.cli.common import Progress

    with Progress("embedding x", min_items=64) as quiet:
        quiet(10, 20)  # under min_items still to do: no bar
    assert capsys.readouterr().err == ""
    with Progress("train rge", unit="step") as bar:
        for step in range(4):
            bar(step, 3, loss="0.500")
    err = capsys.readouterr().err
    assert "train rge" in err and "3/3" in err and "loss=0.500" in err
    cli_dir = REPO_ROOT / "rge_demo" / "cli"
    makers = [p.name for p in cli_dir.glob("*.py") if "tqdm" in p.read_text() and p.name != "common.py"]
    assert makers == []


def test_sampling_options_are_refused_before_the_model_loads_or_a_run_is_written(taught_dir, tmp_path, env, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "no-model-here"  # a model that would fail to load: the option is refused first
    assert main(["eval", "--model", str(missing), "--tasks", "count", "--split", "ind", "--queries", "2",
                 "--samples", "2", "--seed", "-1", "--out", str(out)]) == 2
    assert "error: the seed must be a whole number in [0, 2**63), got -1" in capsys.readouterr().err and not out.exists()
    assert main(["eval", "--model", str(taught_dir), "--tasks", "count", "--split", "ind", "--queries", "2",
                 "--samples", "2", "--seed", "-1", "--out", str(out)]) == 2
    assert "error: the seed must be a whole number in [0, 2**63), got -1" in capsys.readouterr().err and not out.exists()
    assert main(["eval", "--model", str(taught_dir), "--mmeb", str(make_mmeb(tmp_path / "mmeb")), "--mode", "oracle",
                 "--limit", "1"]) == 2
    assert "error: --mode oracle embeds each query with its oracle rationale: world tasks only" in capsys.readouterr().err
    for t in ("inf", "1e-300"):
        assert main(["sample", "--model", str(missing), "--world", "count", "-n", "2", "--limit", "1",
                     "--temperature", t]) == 2
        assert "error: the temperature must be in [0.01, 5]" in capsys.readouterr().err


def test_eval_of_the_worded_world(taught_dir, tmp_path, capsys):
    """``--wordings`` evaluates the worded world: its oracle rationales end with the worded targets."""
    from rge_demo.data import world

    out = tmp_path / "run"
    code = main(["eval", "--model", str(taught_dir), "--tasks", "count", "--split", "ind", "--queries", "8",
                 "--mode", "direct", "--wordings", "--out", str(out)])
    capsys.readouterr()
    cases = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    want = [ex.rationale for ex in world.generate("count", "ind", 8, 0, wordings=True)]
    assert code == 0 and [c["oracle_rationale"] for c in cases] == want
    assert want != [ex.rationale for ex in world.generate("count", "ind", 8, 0)]  # some target is worded


def test_eval_with_sampled_columns_and_with_a_reasoner(taught_dir, tiny_dir, tmp_path, env, capsys):
    out = tmp_path / "run"
    code = main(["eval", "--model", str(taught_dir), "--tasks", "count", "--split", "ind", "--queries", "3",
                 "--max-new-tokens", "6", "--samples", "3", "--temperature", "1.5", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "Sampled rationales: 3 per query at T=1.5" in text
    assert "| count/ind | 3 |" in text and "pass@3" in text and "centroid P@1" in text
    table = json.loads((out / "sampling.json").read_text())
    assert table["overall"]["n_queries"] == 3 and 0 <= table["overall"]["pass@3"] <= 1
    assert table["overall"]["pass@3"] >= table["overall"]["sample_p1"]  # at least one of 3 vs one on average

    pair = tmp_path / "pair"
    code = main(["eval", "--model", str(taught_dir), "--reasoner", str(tiny_dir), "--tasks", "count", "--split",
                 "ind", "--queries", "3", "--max-new-tokens", "6", "--out", str(pair)])
    capsys.readouterr()
    summary = json.loads((pair / "summary.json").read_text())
    assert code == 0 and summary["model"] == f"{tiny_dir.name}+{taught_dir.name}" and summary["n"] == 3
    for bad, expect in ((["--mode", "direct", "--reasoner", str(tiny_dir)], "--reasoner writes T-CoTs"),
                        (["--samples", "2", "--mode", "oracle"], "--samples samples rationales"),
                        (["--samples", "2", "--reasoner", str(tiny_dir)], "does not combine with --reasoner")):
        assert main(["eval", "--model", str(taught_dir), "--tasks", "count", *bad]) == 2
        assert expect in capsys.readouterr().err
