"""Golden prompts: for each of the 36 MMEB-V1 subsets, the text rge-demo gives the processor equals,
byte for byte, what the reference pipeline (MCG-NJU/RGE at 60744447) gives it for the same row.

The expected strings below were written by hand by following the reference code on each fixture row
(tests/fixtures/mmeb_v1_rows.json), not by calling this project:

1. ``NewPromptsEvalDataset``: the subset's rule from ``instruction_replacements-eval.yaml`` (query,
   ``qry_text``) or ``candidate_replacements.yaml`` (candidate, each ``tgt_text``) by
   ``apply_simple_text_ops`` (value_map, then original -> replacement, then prefix_add, suffix_add),
   then ``ensure_trailing_newline``.
2. ``EvalDataset.__getitem__``: ``<|image_1|>`` -> ``<|vision_start|><|image_pad|><|vision_end|>``
   where it stands; removed when the row has no image path (WebQA and EDIS queries).
3. ``AREvalCollator``: one user message with one text part through the checkpoint's chat template
   (Qwen2.5-VL's: system "You are a helpful assistant."), ``add_generation_prompt=True``; the
   candidate side ("tgt") appends ``<emb>``, the query side ("qry") does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from released_layout import write_released_checkpoint
from rge_demo.__main__ import main as cli_main
from rge_demo.analysis.eval_tasks import MMEB_META_TASKS, load_mmeb
from rge_demo.analysis.evaluate import evaluate
from rge_demo.data.items import Gallery, Item
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.profiles import profile_for_folder
from rge_demo.embedding.prompts import prompt_text
from rge_demo.models.loading import load_checkpoint
from rge_demo.models.processor import load_processor

FIXTURE = Path(__file__).parent / "fixtures" / "mmeb_v1_rows.json"
REPO = Path(__file__).resolve().parents[1]

# The Qwen2.5-VL chat template around a one-text-part user turn, as the reference renders it.
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"

# subset -> (query user text, [candidate user texts, in the row's tgt_text order])
GOLDEN: dict[str, tuple[str, list[str]]] = {
    # ---- Classification
    "ImageNet-1K": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Identify the category of the main object in the given image for classification\n",
        ["Summarize the following object category in one word: coucal\n",
         "Summarize the following object category in one word: Italian greyhound\n"]),
    "N24News": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Identify the category of the given news with the following caption for domain classification: "
        "Shaquille O'Neal and Kobe Bryant at a game in 2002.\n",
        ["Summarize the following news category in one word: sports\n",
         "Summarize the following news category in one word: politics\n"]),
    "HatefulMemes": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Determine whether the given image contains hateful speech or not for binary classification\n",
        ["Summarize the following statement in one word: No, it does not contain hateful speech.\n",
         "Summarize the following statement in one word: Yes, it contains hateful speech.\n"]),
    "VOC2007": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Identify the category of the main object in the given image for classification\n",
        ["Summarize the following object category in one word: bicycle\n",
         "Summarize the following object category in one word: bus\n"]),
    "SUN397": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Identify the category of the scene in the given image for classification\n",
        ["Summarize the following scene category in one word: abbey\n",
         "Summarize the following scene category in one word: airport terminal\n"]),
    "Place365": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Identify the category of the scene in the given image for classification\n",
        ["Summarize the following scene category in one word: airfield\n",
         "Summarize the following scene category in one word: alley\n"]),
    "ImageNet-A": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Identify the category of the main object in the given image for classification\n",
        ["Summarize the following object category in one word: sea anemone, anemone\n",
         "Summarize the following object category in one word: goldfinch\n"]),
    "ImageNet-R": (  # the row has no trailing newline: ensure_trailing_newline adds it
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Identify the category of the main object in the given image for classification\n",
        ["Summarize the following object category in one word: baseball player\n",
         "Summarize the following object category in one word: goldfish\n"]),
    "ObjectNet": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Identify the category of the main object in the given image for classification\n",
        ["Summarize the following object category in one word: alarm clock\n",
         "Summarize the following object category in one word: banana\n"]),
    "Country211": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Identify the category of the country depicted in the given image for classification\n",
        ["Summarize the following country category in one word: Japan\n",
         "Summarize the following country category in one word: Kenya\n"]),
    # ---- VQA
    "OK-VQA": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer the question based on the given image: What is the hairstyle of the blond called?\n",
        ["Summarize the following answer in one word: pony tail\n",
         "Summarize the following answer in one word: bun\n"]),
    "A-OKVQA": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer the question based on the given image: What is the man waiting for?\n",
        ["Summarize the following answer in one word: cab\n",
         "Summarize the following answer in one word: bus\n"]),
    "DocVQA": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer a document-related question based on the given image: Which part of Virginia is this letter sent from?\n",
        ["Summarize the following answer in one word: Richmond\n",
         "Summarize the following answer in one word: Norfolk\n"]),
    "InfographicsVQA": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer an infographic-related question based on the given image: "
        "Which type of fonts offer better readability in printed works?\n",
        ["Summarize the following answer in one word: serif fonts\n",
         "Summarize the following answer in one word: sans serif fonts\n"]),
    "ChartQA": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer a chart-related question based on the given image: How many values are below 40 in the Unfavorable graph?\n",
        ["Summarize the following answer in one word: 6\n",
         "Summarize the following answer in one word: 5\n"]),
    "Visual7W": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer the question based on the given image: Where is this taking place?\n",
        ["Summarize the following answer in one word: At a racetrack.\n",
         "Summarize the following answer in one word: In a kitchen.\n"]),
    "ScienceQA": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer a science-related question based on the given image: Which of these states is farthest north?\n",
        ["Summarize the following answer in one word: Maine\n",
         "Summarize the following answer in one word: Texas\n"]),
    "VizWiz": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer a question based on the given image: What is this?\n",
        ["Summarize the following answer in one word: soup\n",
         "Summarize the following answer in one word: unanswerable\n"]),
    "GQA": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer a question based on the given image: Is the sky blue or white?\n",
        ["Summarize the following answer in one word: blue\n",
         "Summarize the following answer in one word: white\n"]),
    "TextVQA": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Answer a question based on the given image: What is the brand of this camera?\n",
        ["Summarize the following answer in one word: dakota\n",
         "Summarize the following answer in one word: nikon\n"]),
    # ---- Retrieval
    "VisDial": (
        "Describe and represent the following dialogue about an image for image retrieval: "
        "Q:is the photo in color\nA:yes\nQ:is it well lit\nA:no\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word\n"]),
    "CIRR": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and represent the above image and the following described changes about the given image for "
        "composed image retrieval: Show three bottles of soft drink.\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n"]),
    "VisualNews_t2i": (
        "Describe and represent the following news caption for news photo retrieval. "
        "US goalkeeper Hope Solo makes a save.\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n"]),
    "VisualNews_i2t": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and represent the above image for news caption retrieval.\n",
        ["Summarize the following news caption in one word: "
         "Indian National Congress Vice President Rahul Gandhi addresses a meeting in New Delhi.\n",
         "Summarize the following news caption in one word: US goalkeeper Hope Solo makes a save.\n"]),
    "MSCOCO_t2i": (
        "Describe and represent the following descriptive caption for everyday image retrieval: "
        "A man with a red helmet on a small moped on a dirt road.\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n"]),
    "MSCOCO_i2t": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and represent the above everyday image for a corresponding description retrieval.\n",
        ["Summarize the following sentence in one word: A man with a red helmet on a small moped on a dirt road.\n",
         "Summarize the following sentence in one word: Two dogs play in the snow.\n"]),
    "NIGHTS": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and represent the above day-to-day image for a similar image retrieval.\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n"]),
    "WebQA": (  # <|image_1|> without an image: the vision tokens are removed, their newline stays
        "\nAnswer and represent the following question for a Wikipedia image retrieval: "
        "Does a Minnetonka Rhododendron flower have petals in a cup shape?\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given Wikipedia image with the following related "
         "text information in one word: Minnetonka Rhododendron flower along Tranquility Court, Virginia.\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given Wikipedia image with the following related "
         "text information in one word: Azalea in a garden.\n"]),
    "FashionIQ": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and represent the above fashion image and the following described modification on style note for a "
        "fashion image retrieval: Is shiny and silver with shorter sleeves and fit and flare.\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word.\n"]),
    "Wiki-SS-NQ": (
        "Describe and represent the following query for a document image retrieval: "
        "who needs to know about the jet stream\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image in one word\n"]),
    "OVEN": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and represent the above image and the following question for a Wikipedia image-description pair "
        "retrieval: What is the name of this place?\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given Wikipedia image with the following related "
         "text information in one word: Titisee. The Titisee is a lake in the southern Black Forest in "
         "Baden-Württemberg.\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given Wikipedia image with the following related "
         "text information in one word: Lake Constance.\n"]),
    "EDIS": (  # <|image_1|> without an image, as in WebQA
        "\nDescribe and represent the following provided caption for a news image retrieval: "
        "Former Israeli president Shimon Peres arrives at the World Economic Forum in Jordan in May 2015.\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image with the following related text "
         "information in one word: World As the West pays tribute to Peres, many Arabs recall a legacy of "
         "destruction.\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given image with the following related text "
         "information in one word: Sports\n"]),
    # ---- Visual grounding
    "MSCOCO": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and focus on the object in the image labeled as \"dog\"\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given cropped image of the object in one word\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given cropped image of the object in one word\n"]),
    "RefCOCO": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and focus on the object in the image that follows the following language expressions. "
        "\"bowl behind the others can only see part\"\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given cropped image of the object in one word\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given cropped image of the object in one word\n"]),
    "RefCOCO-Matching": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and focus on the object in the image that follows the following language expressions: "
        "\"bowl behind the others can only see part\"\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nDescribe and focus on the object in the image that follows the "
         "following language expressions: \"Dish in top right corner\"\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nDescribe and focus on the object in the image that follows the "
         "following language expressions: \"the cup on the left\"\n"]),
    "Visual7W-Pointing": (
        "<|vision_start|><|image_pad|><|vision_end|>\n"
        "Describe and focus on the object in the image that answers the following question \"Which box frames the "
        "toilet?\"\n",
        ["<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given cropped image of the object in one word\n",
         "<|vision_start|><|image_pad|><|vision_end|>\nSummarize the given cropped image of the object in one word\n"]),
}


def query_prompt(subset: str) -> str:
    return HEAD + GOLDEN[subset][0] + TAIL


def candidate_prompts(subset: str) -> list[str]:
    return [HEAD + c + TAIL + "<emb>" for c in GOLDEN[subset][1]]


def write_mmeb36(root: Path) -> Path:
    """The fixture rows as an MMEB-eval folder: ``<subset>/test-00000-of-00001.parquet`` + ``images/``."""
    rows = json.loads(FIXTURE.read_text(encoding="utf-8"))["rows"]
    for i, (subset, row) in enumerate(rows.items()):
        row = dict(row)
        row["qry_img_path"] = f"{subset}/{row['qry_img_path']}" if row["qry_img_path"] else ""
        row["tgt_img_path"] = [f"{subset}/{p}" if p else "" for p in row["tgt_img_path"]]
        for j, path in enumerate([row["qry_img_path"], *row["tgt_img_path"]]):
            if path:
                (root / "images" / subset).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40 + 4 * j, 32 + (i % 5) * 4), (30 * j, 7 * i, 120)).save(root / "images" / path)
        (root / subset).mkdir(parents=True, exist_ok=True)
        pd.DataFrame([row]).to_parquet(root / subset / "test-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny checkpoint in the released MCG-NJU/RGE layout: no rge_profile, so the reference profile."""
    return write_released_checkpoint(tmp_path_factory.mktemp("released-rge"))


@pytest.fixture(scope="module")
def mmeb36(tmp_path_factory):
    return write_mmeb36(tmp_path_factory.mktemp("mmeb36") / "MMEB-eval")


@pytest.fixture(scope="module")
def tasks(mmeb36):
    return {t.name: t for t in load_mmeb(mmeb36)}


@pytest.fixture(scope="module")
def reference(released):
    profile = profile_for_folder(released)
    return load_processor(released, min_pixels=profile.min_pixels, max_pixels=profile.max_pixels), profile


def test_fixture_covers_the_36_subsets(tasks):
    assert set(GOLDEN) == set(MMEB_META_TASKS) == set(tasks)
    assert len(GOLDEN) == 36


@pytest.mark.parametrize("subset", list(GOLDEN))
def test_golden_prompt(subset, tasks, reference):
    processor, profile = reference
    assert profile.name == "reference"
    task = tasks[subset]
    q = task.queries[0]
    assert prompt_text(processor, q.item, direct=False, profile=profile) == query_prompt(subset)
    # The same query without reasoning (the "direct" column): the reference prompt with <emb> pre-filled.
    assert prompt_text(processor, q.item, direct=True, profile=profile) == query_prompt(subset) + "<emb>"
    got = [prompt_text(processor, task.candidates[c].item, direct=True, profile=profile) for c in q.candidates]
    assert got == candidate_prompts(subset)


@pytest.fixture(scope="module")
def released_model(released):
    return load_checkpoint(released, device="cpu", dtype="float32")


@pytest.mark.timeout(600)
def test_encoder_and_evaluation_embed_the_golden_prompts(released_model, tasks):
    """The encoder (profile from the checkpoint) tokenises exactly these prompts, images inline, and an
    evaluation's case records carry the query prompt."""
    model, processor = released_model
    enc = Encoder(model, processor)
    assert enc.profile.name == "reference" and enc.budget_rule == "last_token"
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for subset in ("ImageNet-1K", "WebQA", "CIRR"):
        task = tasks[subset]
        q = task.queries[0]
        row = enc.rows([q.item.to_input()], direct=False)[0]
        assert row.prompt == query_prompt(subset)
        n_image = 0 if row.grid is None else int(row.grid.prod()) // 4  # merged 2x2 patches
        assert row.ids.count(image_pad) == n_image and (n_image > 0) == (q.item.image_path is not None)
        cands = enc.rows([task.candidates[c].item.to_input() for c in q.candidates], direct=True)
        assert [r.prompt for r in cands] == candidate_prompts(subset)
    picked = [tasks["VOC2007"], tasks["WebQA"]]
    direct = evaluate(enc, picked, mode="direct")
    assert [c["prompt"] for c in direct.cases] == [query_prompt("VOC2007") + "<emb>", query_prompt("WebQA") + "<emb>"]
    reason = evaluate(enc, picked[:1], mode="reason", max_new_tokens=2)
    assert reason.cases[0]["prompt"] == query_prompt("VOC2007")


# ------------------------------------------------------------------------------------------- CLI
def run_prompts(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, "-m", "rge_demo", "prompts", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=280)


@pytest.mark.slow  # a real process: imports torch and transformers (~10 s of CPU)
@pytest.mark.timeout(300)
def test_prompts_cli_on_the_36_subsets(released, mmeb36):
    out = run_prompts("--model", str(released), "--mmeb", str(mmeb36), "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert all(set(r) == {"subset", "row", "side", "prompt"} for r in lines)
    assert len(lines) == 36 * 3  # per subset: its query, then its two candidates (each embedded once)
    by_subset: dict[str, list[dict]] = {}
    for r in lines:
        by_subset.setdefault(r["subset"], []).append(r)
    assert set(by_subset) == set(GOLDEN)
    for subset, records in by_subset.items():
        assert [(r["row"], r["side"]) for r in records] == [(0, "query"), (0, "candidate"), (0, "candidate")]
        assert records[0]["prompt"] == query_prompt(subset)
        assert [r["prompt"] for r in records[1:]] == candidate_prompts(subset)


def cli_lines(capsys, *argv: str) -> list[dict]:
    assert cli_main(["prompts", *argv, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_prompts_cli_subsets_one_item_and_errors(released, mmeb36, tmp_path, capsys):
    lines = cli_lines(capsys, "--model", str(released), "--mmeb", str(mmeb36), "--subsets", "WebQA,ImageNet-1K",
                      "--limit", "1", "--direct")
    assert [(r["subset"], r["side"]) for r in lines] == [("WebQA", "query")] + [("WebQA", "candidate")] * 2 + \
        [("ImageNet-1K", "query")] + [("ImageNet-1K", "candidate")] * 2
    assert lines[0]["prompt"] == query_prompt("WebQA") + "<emb>"  # --direct: the query with <emb> pre-filled

    image = tmp_path / "q.png"
    Image.new("RGB", (60, 40), "red").save(image)
    assert cli_lines(capsys, "--model", str(released), "--image", str(image), "--text", "What colour is it?",
                     "--task", "vqa") == [{
        "subset": None, "row": 0, "side": "query",
        "prompt": HEAD + "<|vision_start|><|image_pad|><|vision_end|>\n"
                         "Answer the question based on the given image: What colour is it?\n" + TAIL}]
    [line] = cli_lines(capsys, "--model", str(released), "--text", "coucal", "--task", "classification",
                       "--side", "candidate")
    assert line["prompt"] == HEAD + "Summarize the following object category in one word: coucal\n" + TAIL + "<emb>"

    for argv, message in [(["--text", "x", "--task", "count"], "no task 'count'"),
                          (["--mmeb", str(mmeb36), "--subsets", "Nope"], "subset 'Nope'"),
                          (["--mmeb", str(mmeb36), "--text", "x"], "not both"),
                          (["--limit", "2", "--text", "x"], "need --mmeb DIR"),
                          ([], "give --mmeb DIR or one item")]:
        assert cli_main(["prompts", "--model", str(released), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_embed_and_search_task_follow_the_model_profile(released, tmp_path, capsys):
    """``embed --task`` and ``search``'s default instruction are the checkpoint's own (the reference profile's
    rewrites), the same text ``prompts`` prints: they used a generic MMEB instruction ("Represent the given
    class label."), so a real checkpoint was given an instruction it was not trained with."""
    assert cli_main(["embed", "--model", str(released), "--text", "coucal", "--task", "classification",
                     "--side", "candidate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt"] == HEAD + "Summarize the following object category in one word: coucal\n" + TAIL + "<emb>"
    image = tmp_path / "q.png"
    Image.new("RGB", (60, 40), "red").save(image)
    assert cli_main(["embed", "--model", str(released), "--image", str(image), "--text", "What colour is it?",
                     "--task", "vqa", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt"] == (HEAD + "<|vision_start|><|image_pad|><|vision_end|>\n"
                             "Answer the question based on the given image: What colour is it?\n" + TAIL + "<emb>")
    # a meta-task name picks that meta-task's first task of the profile ("retrieval": image to caption)
    assert cli_main(["embed", "--model", str(released), "--image", str(image), "--task", "retrieval", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"].startswith(
        HEAD + "<|vision_start|><|image_pad|><|vision_end|>\nDescribe and represent the above everyday image for a "
               "corresponding description retrieval.")

    gallery = Gallery(name="g", root=tmp_path / "g", meta_task="vqa",
                      items=[Item(id=f"a{i}", text=t, label=t) for i, t in enumerate(["red", "blue"])])
    gallery.save()
    assert cli_main(["search", "--model", str(released), "--gallery", str(gallery.root), "--image", str(image),
                     "--text", "What colour is it?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == out["prompt"]

    assert cli_main(["embed", "--model", str(released), "--text", "x", "--task", "count"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no task 'count'; its tasks: classification, scene classification, vqa" in err, err
    assert "or a meta-task: classification, grounding, retrieval, vqa" in err and len(err.splitlines()) == 1
