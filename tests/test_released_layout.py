"""A checkpoint in the released MCG-NJU/RGE layout (transformers 4.51, bf16, Qwen tokenizer files,
``"processor_class": "Qwen2_5_VLProcessor"``) loads without torchvision and embeds: through the
loader, the ModelManager, the CLI and the app's service; broken files give one line naming the file."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer

from released_layout import CHAT_TEMPLATE, EMB_TOKEN, write_released_checkpoint
from rge_demo.__main__ import main
from rge_demo.config import REPO_ROOT, Settings
from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.models.loading import (
    CheckpointError,
    CheckpointFileError,
    CorruptWeights,
    InvalidJSON,
    ModelError,
    UnsupportedArchitecture,
    load_checkpoint,
)
from rge_demo.models.manager import ModelManager
from rge_demo.models.processor import RGEProcessor, load_processor

RELEASED_FILES = {  # what a transformers 4.51 save of a Qwen2.5-VL-3B fine-tune holds, pushed to the hub
    ".gitattributes", "README.md", "added_tokens.json", "chat_template.json", "config.json",
    "generation_config.json", "merges.txt", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
    "model.safetensors.index.json", "preprocessor_config.json", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json", "vocab.json",
}
HIDDEN = 64
INPUTS = [
    EmbedInput("Represent the given image for classification.", "", Image.new("RGB", (300, 200), "red")),
    EmbedInput("Represent the given text.", "a blue square", None),
    EmbedInput("Represent the given image with the following question:", "how many?",
               Image.new("RGB", (120, 90), "green")),
]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Untied embeddings, two shards, chat template in chat_template.json and tokenizer_config.json."""
    return write_released_checkpoint(tmp_path_factory.mktemp("released") / "RGE")


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """Tied embeddings (no lm_head.weight on disk), one model.safetensors, template only in tokenizer_config.json."""
    return write_released_checkpoint(tmp_path_factory.mktemp("tied") / "RGE-tied", tied=True, shards=1,
                                     chat_template_in="tokenizer_config", seed=1)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {**os.environ, "RGE_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cli(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rge_demo", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=420)  # a loaded machine imports torch slowly


def v5_name(key: str) -> str:
    """transformers 4.x checkpoint name -> the module name the loaded transformers 5 model uses."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return key


def visual_tokens(processor, image) -> int:
    prompt = "<|vision_start|><|image_pad|><|vision_end|>"
    ids = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"]
    return int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())


# ---------------------------------------------------------------------------------- the layout


def test_the_fixture_is_the_released_layout(released, tied):
    assert {p.name for p in released.iterdir()} == RELEASED_FILES
    assert {p.name for p in tied.iterdir()} == (RELEASED_FILES - {"chat_template.json", "model.safetensors.index.json",
                                                                  "model-00001-of-00002.safetensors",
                                                                  "model-00002-of-00002.safetensors"}
                                                | {"model.safetensors"})
    config = json.loads((released / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"] and "text_config" not in config
    assert config["torch_dtype"] == "bfloat16" and config["transformers_version"].startswith("4.51")
    assert "rge_profile" not in config  # the released checkpoint declares no rge-demo profile
    assert json.loads((released / "preprocessor_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
    index = json.loads((released / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index.values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    keys = set(index)
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"} <= keys
    assert any(k.startswith("model.layers.0.") for k in keys) and any(k.startswith("visual.blocks.0.") for k in keys)
    assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in keys)  # 4.x names only
    assert "lm_head.weight" not in load_file(tied / "model.safetensors")
    shard = load_file(released / "model-00001-of-00002.safetensors")
    assert {t.dtype for t in shard.values()} == {torch.bfloat16}
    added = json.loads((released / "added_tokens.json").read_text())
    assert added[EMB_TOKEN] == max(added.values()) == added["<|file_sep|>"] + 1


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="shows the failure without torchvision")
def test_auto_processor_is_what_fails_on_this_layout(released):
    """The bug this layout reproduces: AutoProcessor follows processor_class to the video processor."""
    from transformers import AutoProcessor

    with pytest.raises(ImportError, match="[Tt]orchvision"):
        AutoProcessor.from_pretrained(released, local_files_only=True)


# ---------------------------------------------------------------------------------- the loader


@pytest.mark.parametrize("which", ["released", "tied"])
def test_loads_every_weight_as_written(which, request):
    folder = request.getfixturevalue(which)
    model, processor = load_checkpoint(folder, device="cpu")
    assert isinstance(processor, RGEProcessor) and not model.training
    got = model.state_dict()
    on_disk = {}
    for f in sorted(folder.glob("*.safetensors")):
        on_disk.update(load_file(f))
    for key, tensor in on_disk.items():
        assert torch.equal(got[v5_name(key)], tensor.float()), key  # bf16 on disk, fp32 on CPU, same numbers
    if which == "tied":
        assert set(got) == {v5_name(k) for k in on_disk} | {"lm_head.weight"}
        assert torch.equal(got["lm_head.weight"], got["model.language_model.embed_tokens.weight"])
        assert model.config.tie_word_embeddings
    else:
        assert set(got) == {v5_name(k) for k in on_disk}
        assert not torch.equal(got["lm_head.weight"], got["model.language_model.embed_tokens.weight"])
    vecs = Encoder(model, processor).direct(INPUTS)
    assert vecs.shape == (3, HIDDEN) and np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("which", ["released", "tied"])
def test_tokenizer_and_chat_template_are_the_checkpoints(which, request):
    folder = request.getfixturevalue(which)
    processor = load_processor(folder)
    tok = processor.tokenizer
    added = json.loads((folder / "added_tokens.json").read_text())
    assert tok.convert_tokens_to_ids(EMB_TOKEN) == added[EMB_TOKEN]
    assert processor.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many? "}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + EMB_TOKEN
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "<|vision_start|><|image_pad|><|vision_end|>How many? <|im_end|>\n<|im_start|>assistant\n<emb>")
    # Same ids as the tokenizers library reading tokenizer.json itself: <emb> one token, specials intact.
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok(prompt, add_special_tokens=False)["input_ids"] == raw.encode(prompt, add_special_tokens=False).ids
    assert tok(prompt)["input_ids"].count(added[EMB_TOKEN]) == 1


def test_pixel_limits_come_from_the_profile(released, tmp_path):
    """Hand computation with Qwen's smart_resize (factor 28: 14 px patches merged 2x2):

    round each side to a multiple of 28; if the area exceeds max_pixels, scale both sides by
    beta = sqrt(h*w / max_pixels) and floor to multiples of 28; if it is under min_pixels, scale by
    beta = sqrt(min_pixels / (h*w)) and ceil. Merged visual tokens = (H/28) * (W/28).

    Reference profile (min 256*28*28 = 200704, max 1024*28*28 = 802816):
      300x200: 308x196 = 60368 < 200704 -> beta = sqrt(200704/60000) = 1.829;
               W = ceil(548.7/28) = 20 -> 560, H = ceil(365.8/28) = 14 -> 392: 20*14 = 280 tokens.
      1600x1200: 1596x1204 = 1921584 > 802816 -> beta = sqrt(1920000/802816) = 1.5465;
               W = floor(1034.6/28) = 36, H = floor(775.9/28) = 27: 36*27 = 972 tokens.
    The checkpoint's own limits (3136 .. 12845056) keep the rounded sizes:
      300x200 -> 11*7 = 77 tokens; 1600x1200 -> 57*43 = 2451 tokens.
    The micro profile (min = max = 84*84 = 7056):
      300x200: 60368 > 7056 -> beta = sqrt(60000/7056) = 2.916; W = floor(102.9/28) = 3, H = floor(68.6/28) = 2: 6.
    """
    small, large = Image.new("RGB", (300, 200)), Image.new("RGB", (1600, 1200))
    _, processor = load_checkpoint(released, device="cpu")  # declares no profile: the reference one
    assert processor.pixel_limits == (256 * 28 * 28, 1024 * 28 * 28)
    assert (visual_tokens(processor, small), visual_tokens(processor, large)) == (280, 972)

    own = load_processor(released)  # no limits given: the checkpoint's preprocessor_config.json
    assert own.pixel_limits == (3136, 12845056)
    assert (visual_tokens(own, small), visual_tokens(own, large)) == (77, 2451)

    declared = shutil.copytree(released, tmp_path / "micro-profile")
    config = json.loads((declared / "config.json").read_text())
    (declared / "config.json").write_text(json.dumps({**config, "rge_profile": "micro"}))
    _, processor = load_checkpoint(declared, device="cpu")
    assert processor.pixel_limits == (7056, 7056) and visual_tokens(processor, small) == 6


def test_qwen2_vl_checkpoint_loads_and_embeds(tmp_path):
    folder = write_released_checkpoint(tmp_path / "qwen2-vl", family="qwen2_vl", tied=True)
    model, processor = load_checkpoint(folder, device="cpu")
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    vecs = Encoder(model, processor).direct(INPUTS)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)


def test_a_direct_row_is_the_reasoning_row_plus_emb(released):
    """Compare processes a query once and appends <emb> for its direct pass (``Row.with_emb``): the
    same prompt, ids, token types and pixels as processing the direct prompt, under the reference
    profile (image inline, MMEB placeholder) and for a text-only candidate."""
    enc = Encoder(*load_checkpoint(released, device="cpu"))
    query = EmbedInput(text="What is in the image?", image=Image.new("RGB", (300, 200), "red"), subset="VQAv2",
                       mmeb_text="<|image_1|> Represent the given image with the following question: What is in the image?")
    for x in (query, *INPUTS):
        reasoning, direct = enc.rows([x], direct=False)[0], enc.rows([x], direct=True)[0]
        derived = reasoning.with_emb(enc.emb_id)
        assert (derived.prompt, derived.ids, derived.mm) == (direct.prompt, direct.ids, direct.mm)
        assert derived.prompt.endswith(EMB_TOKEN) and derived.ids[-1] == enc.emb_id
        if direct.pixel_values is None:
            assert derived.pixel_values is None
        else:
            assert torch.equal(derived.pixel_values, direct.pixel_values) and torch.equal(derived.grid, direct.grid)


# ------------------------------------------------------------------ manager, CLI and the app


def test_manager_loads_it_with_its_profile(released, tied, tmp_path):
    mm = ModelManager(Settings(cache_dir=tmp_path / "cache", device="cpu", max_new_tokens=3))
    a, b = mm.load(str(released)), mm.load(str(tied))
    for loaded in (a, b):
        assert loaded.profile.name == "reference" and loaded.encoder.profile is loaded.profile
        assert loaded.encoder.budget_rule == "last_token"  # the reference's rule
        assert loaded.status()["profile"] == "reference"
    model, processor = load_checkpoint(released, device="cpu")
    np.testing.assert_allclose(a.encoder.direct(INPUTS), Encoder(model, processor).direct(INPUTS), atol=1e-6)
    (r,) = a.encoder.reason(INPUTS[:1])
    assert r.tokens <= 3 and np.isfinite(r.vector).all()
    assert a.fingerprint != b.fingerprint


@pytest.mark.slow  # a real process: imports torch and transformers (~10 s of CPU)
def test_cli_embeds_it(released, tmp_path, env):
    image = tmp_path / "red.png"
    INPUTS[0].image.save(image)
    r = cli("embed", "--model", released, "--image", image, "--instruction", INPUTS[0].instruction, "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    vec = np.array(out["vector"])
    assert out["dim"] == HIDDEN and abs(np.linalg.norm(vec) - 1) < 1e-5
    model, processor = load_checkpoint(released, device="cpu")
    np.testing.assert_allclose(vec, Encoder(model, processor).direct(INPUTS[:1])[0], atol=1e-5)
    assert "Traceback" not in r.stderr


def test_cli_reasons_with_it(released, capsys, env):
    code = main(["embed", "--model", str(released), "--text", "a blue square", "--reason", "--max-new-tokens", "3",
                 "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "reasoning" and out["tokens"] <= 3 and out["dim"] == HIDDEN


def test_service_loads_it_and_searches(released, tmp_path):
    from rge_demo.app.demo import Demo

    demo = Demo(Settings(cache_dir=tmp_path / "cache", device="cpu", model="rge-micro", max_new_tokens=3))
    loaded = demo.model(str(released))  # what the Models tab's load does (then it warms the galleries)
    assert loaded.profile.name == "reference"
    g = demo.gallery("classification")
    q = g.queries[0]
    out = demo.search("classification", str(g.image_path(q.image)), q.text, q.instruction, k=3,
                      model_name=loaded.name)
    assert len(out["hits"]) == 3


# ----------------------------------------------------------------------------------- broken files


def _truncate(folder):
    shard = folder / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return shard.name


def _garble_header(folder):
    shard = folder / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:40] = b"\x00\xff" * 16
    shard.write_bytes(bytes(data))
    return shard.name


def _drop_shard(folder):
    (folder / "model-00001-of-00002.safetensors").unlink()
    return "model-00001-of-00002.safetensors"


def _config_not_json(folder):
    (folder / "config.json").write_text('{"architectures": ["Qwen2_5_VLForConditionalGeneration"],\n  "hidden_size": ')
    return "config.json"


def _llama_config(folder):
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 448, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.3"}))
    return "config.json"


def _config_field_type(folder):
    config = json.loads((folder / "config.json").read_text())
    config["text_config"] = {**config.get("text_config", {}), "hidden_size": "abc"}
    (folder / "config.json").write_text(json.dumps(config))
    return "config.json"


def _tokenizer_not_json(folder):
    (folder / "tokenizer.json").write_text("version: 1.0\n")
    return "tokenizer.json"


BROKEN = {
    "truncated-shard": (_truncate, CorruptWeights, "truncated"),
    "garbled-header": (_garble_header, CorruptWeights, "safetensors"),
    "missing-shard": (_drop_shard, CorruptWeights, "listed in model.safetensors.index.json"),
    "config-not-json": (_config_not_json, InvalidJSON, "not valid JSON"),
    "llama-config": (_llama_config, UnsupportedArchitecture, "LlamaForCausalLM"),
    "tokenizer-not-json": (_tokenizer_not_json, InvalidJSON, "not valid JSON"),
    "config-field-type": (_config_field_type, CheckpointFileError, "cannot be read as a model config"),
}


def test_a_chat_template_that_does_not_compile_is_refused_at_load(released, tmp_path, capsys, env):
    folder = shutil.copytree(released, tmp_path / "bad-template")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }")  # unclosed
    (folder / "chat_template.json").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"cannot load the processor/tokenizer \(ValueError: its chat template "
                                             r"does not render \(TemplateSyntaxError"):
        load_checkpoint(folder, device="cpu")
    assert main(["embed", "--model", str(folder), "--text", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder) in err[0] and "chat template does not render" in err[0]


@pytest.fixture(params=sorted(BROKEN))
def broken(request, released, tmp_path):
    damage, error, words = BROKEN[request.param]
    folder = shutil.copytree(released, tmp_path / "broken")
    name = damage(folder)
    return folder, folder / name, error, words


def test_broken_checkpoint_is_one_clear_error(broken, capsys, env, tmp_path):
    folder, path, error, words = broken
    with pytest.raises(error) as e:
        load_checkpoint(folder, device="cpu")
    assert isinstance(e.value, CheckpointFileError) and isinstance(e.value, ModelError)
    message = str(e.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message

    # CLI: exit 2, one line on stderr naming the file.
    code = main(["embed", "--model", str(folder), "--text", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and path.name in err[0] and "Traceback" not in err[0]

    # The app: the service raises it, and the tabs' wrapper shows it as the message.
    import gradio as gr

    from rge_demo.app.demo import Demo
    from rge_demo.ui.common import friendly

    demo = Demo(Settings(cache_dir=tmp_path / "cache", device="cpu", model="rge-micro"))
    with pytest.raises(gr.Error) as shown:
        friendly(demo.model)(str(folder))
    assert shown.value.message == message and "internal error" not in shown.value.message


@pytest.mark.slow  # a real process: imports torch and transformers (~10 s of CPU)
def test_truncated_checkpoint_in_a_real_process(released, tmp_path, env):
    folder = shutil.copytree(released, tmp_path / "cut")
    name = _truncate(folder)
    r = cli("embed", "--model", folder, "--text", "x", env=env)
    assert r.returncode == 2 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert name in line and "truncated" in line
