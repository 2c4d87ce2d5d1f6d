"""Prompt profiles: the data, their checks, the micro format kept byte for byte, the reference format
for inputs that are not MMEB rows, and the Compare tab's presets following the model's profile."""

from __future__ import annotations

import json

import pytest

from conftest import colour_image
from released_layout import write_released_checkpoint
from rge_demo.analysis.eval_tasks import MMEB_META_TASKS
from rge_demo.config import Settings
from rge_demo.data import world
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.profiles import (DEFAULT_PROFILE, ProfileError, PromptProfile, get_profile, profile_for,
                                         profile_for_folder)
from rge_demo.embedding.prompts import EmbedInput, from_mmeb_text, prompt_text
from rge_demo.models.processor import load_processor
from rge_demo.app.demo import Demo

HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return write_released_checkpoint(tmp_path_factory.mktemp("released-rge"), shards=1)


@pytest.fixture(scope="module")
def released_processor(released):
    return load_processor(released)


# ------------------------------------------------------------------------------------------ data
def test_reference_profile_is_the_reference_pipeline():
    ref = get_profile("reference")
    assert DEFAULT_PROFILE == "reference"
    assert (ref.image_position, ref.separator, ref.trailing_newline, ref.budget_rule) == ("inline", " ", True,
                                                                                         "last_token")
    assert (ref.min_pixels, ref.max_pixels) == (256 * 28 * 28, 1024 * 28 * 28)
    for subset in MMEB_META_TASKS:  # every MMEB-V1 subset has a rule on both sides
        assert ref.subsets[subset]["query"] and ref.subsets[subset]["candidate"], subset
    assert ref.rewrite("<|image_1|>\nRepresent the given image for classification\n", "ImageNet-1K", "query") == \
        "<|image_1|>\nIdentify the category of the main object in the given image for classification\n"
    assert ref.rewrite("coucal", "ImageNet-1K", "candidate") == "Summarize the following object category in one word: coucal"
    assert ref.rewrite("coucal", "NoSuchSubset", "candidate") == "coucal"
    assert {t["meta_task"] for t in ref.tasks.values()} == {"classification", "vqa", "retrieval", "grounding"}
    for task in ref.tasks.values():  # every preset's instructions come from its subset's rewrite
        assert task["subset"] in ref.subsets


def test_micro_profile_tasks_are_the_worlds():
    micro = get_profile("micro")
    assert (micro.image_position, micro.separator, micro.trailing_newline, micro.budget_rule) == ("first", "\n",
                                                                                                 False, "append_emb")
    assert micro.subsets == {}
    assert micro.tasks == {name: {"meta_task": s.meta_task, "query": s.query_instruction,
                                  "candidate": s.candidate_instruction} for name, s in world.TASKS.items()}


def test_rewrite_rules_apply_in_the_reference_order():
    rules = {"value_map": {"Yes": "b yes"}, "original": "b", "replacement": "B", "prefix_add": "<", "suffix_add": ">"}
    p = PromptProfile("t", subsets={"S": {"query": rules}})
    assert p.rewrite("Yes", "S", "query") == "<B yes>"  # value_map, then replace (every b), then prefix, suffix
    assert p.rewrite("No b, b", "S", "query") == "<No B, B>"
    assert p.rewrite("Yes", "S", "candidate") == "Yes" and p.rewrite("Yes", "", "query") == "Yes"
    with pytest.raises(ValueError, match="side"):
        p.rewrite("x", "S", "target")


def test_bad_profiles_name_the_problem(tmp_path):
    with pytest.raises(ProfileError, match=r"unknown prompt profile 'nope'; known: .*'micro'.*'reference'"):
        get_profile("nope")
    with pytest.raises(ProfileError, match="budget_rule"):
        PromptProfile("t", budget_rule="sometimes")
    with pytest.raises(ProfileError, match="image_position"):
        PromptProfile("t", image_position="last")
    with pytest.raises(ProfileError, match="task 'x' needs string fields"):
        PromptProfile("t", tasks={"x": {"query": "q"}})
    with pytest.raises(ProfileError, match="subset 'S' query rule 'prefix' unknown"):
        PromptProfile("t", subsets={"S": {"query": {"prefix": "x"}}})
    with pytest.raises(ProfileError, match="has no task 'nope'; its tasks: count"):
        PromptProfile("t", tasks={"count": {"query": "q", "candidate": "c"}}).task("nope")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ProfileError, match=r"config\.json: cannot read the model config"):
        profile_for_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"rge_profile": "nope"}))
    with pytest.raises(ProfileError, match=r"config\.json: rge_profile 'nope': unknown prompt profile"):
        profile_for_folder(tmp_path)


def test_which_profile_a_checkpoint_gets(tiny, tiny_dir, released):
    model, processor = tiny
    assert profile_for(model.config).name == "micro"  # the micro builder declares it
    assert profile_for_folder(tiny_dir).name == "micro"
    assert profile_for_folder(released).name == "reference"  # the released layout declares none
    assert profile_for(object()).name == "reference"
    assert Encoder(model, processor).profile.name == "micro"
    assert Encoder(model, processor, profile=get_profile("reference")).profile.name == "reference"


# --------------------------------------------------------------------------------------- prompts
def test_micro_format_is_unchanged(tiny):
    """The micro models were trained on exactly these strings: the image first, then instruction\\ntext."""
    model, processor = tiny
    image = colour_image("red")
    mmeb = "<|image_1|>\nRepresent the given image for classification\n"
    cases = [
        (EmbedInput("Represent the given image with the following question:", "How many?", image),
         VISION + "Represent the given image with the following question:\nHow many?"),
        (EmbedInput("", "just text, no instruction", None), "just text, no instruction"),
        (EmbedInput("Represent the given image.", "", image), VISION + "Represent the given image."),
        (EmbedInput(text=from_mmeb_text(mmeb), image=image, mmeb_text=mmeb, subset="ImageNet-1K"),
         VISION + "Represent the given image for classification"),
    ]
    enc = Encoder(model, processor)
    for inp, user in cases:
        for profile in (None, get_profile("micro")):
            assert prompt_text(processor, inp, direct=False, profile=profile) == HEAD + user + TAIL
            assert prompt_text(processor, inp, direct=True, profile=profile) == HEAD + user + TAIL + "<emb>"
        assert enc.rows([inp], direct=True)[0].prompt == HEAD + user + TAIL + "<emb>"


def test_reference_format_for_inputs_that_are_not_mmeb_rows(released_processor):
    """Compare-tab and gallery inputs are written the way MMEB writes its rows, then go through the
    same pipeline: image placeholder first, "instruction text", trailing newline."""
    ref, proc = get_profile("reference"), released_processor
    image = colour_image("blue", (60, 40))
    cases = [
        (EmbedInput("Answer the question based on the given image:", "What colour is it?", image),
         VISION + "\nAnswer the question based on the given image: What colour is it?\n"),
        (EmbedInput("Summarize the following object category in one word:", "coucal", side="candidate"),
         "Summarize the following object category in one word: coucal\n"),
        (EmbedInput("Summarize the given image in one word.", "", image, side="candidate"),
         VISION + "\nSummarize the given image in one word.\n"),
        (EmbedInput("", "a caption\n", None), "a caption\n"),
        # An MMEB row that names no placeholder but has an image gets it first, as MMEB writes images.
        (EmbedInput(text="Represent it", image=image, mmeb_text="Represent it", subset="ImageNet-1K"),
         VISION + "\nRepresent it\n"),
    ]
    for inp, user in cases:
        assert prompt_text(proc, inp, direct=False, profile=ref) == HEAD + user + TAIL


def test_embed_input_checks_the_side():
    with pytest.raises(ValueError, match="side"):
        EmbedInput("i", "t", side="target")
    with pytest.raises(ValueError, match="nothing to embed"):
        EmbedInput()


# ---------------------------------------------------------------------------------- Compare tab
def test_compare_presets_follow_the_models_profile(taught_dir, released, tmp_path):
    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(taught_dir)))
    micro = demo.presets()
    assert micro["profile"] == "micro" and list(micro["tasks"]) == list(world.TASKS)
    assert micro["tasks"]["count"]["query"] == world.TASKS["count"].query_instruction
    reference = demo.presets(str(released))  # read from its config.json, no weights loaded
    assert reference["profile"] == "reference" and not demo.manager.loaded()
    assert reference["tasks"]["classification"]["query"] == \
        "Identify the category of the main object in the given image for classification"
    assert demo.presets("no-such-owner/no-such-model")["profile"] == DEFAULT_PROFILE  # unreachable: the default
    demo.model()  # once loaded, the loaded model's own profile
    assert demo.presets()["profile"] == "micro"


def test_compare_tab_lists_the_profile_presets(taught_dir, released, tmp_path):
    import gradio as gr

    from rge_demo.ui import compare

    demo = Demo(Settings(cache_dir=tmp_path / "cache", model=str(taught_dir)))
    with gr.Blocks():
        compare.build(demo, gr.State(None))
        blocks = gr.context.Context.root_block
    dropdown = next(b for b in blocks.blocks.values()
                    if isinstance(b, gr.Dropdown) and "prompt profile" in (b.label or ""))
    assert [c[1] for c in dropdown.choices] == list(world.TASKS) and dropdown.value == next(iter(world.TASKS))
    line = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "prompt-profile")
    assert "micro" in line.value
    choices, instruction, text = compare._preset_updates(demo, str(released))
    assert choices["choices"] == list(get_profile("reference").tasks)
    assert instruction == get_profile("reference").tasks["classification"]["query"] and "reference" in text
