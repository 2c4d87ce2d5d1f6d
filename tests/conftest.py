"""Shared fixtures: tiny real Qwen2.5-VL checkpoints built once per session (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from rge_demo.embedding.encoder import Encoder, collate, process_rows  # noqa: E402
from rge_demo.embedding.prompts import EMB_TOKEN, EmbedInput, prompt_text  # noqa: E402
from rge_demo.models import micro  # noqa: E402

# Queries whose taught rationales have different lengths, so rows stop at different steps.
TAUGHT = {
    "short": "one red. answer one",
    "medium": "top left red circle, centre blue square. answer two",
    "long": "top left red circle, top blue square, centre green cross, bottom yellow triangle. squares 1. answer one",
}


def colour_image(colour: str, size=(84, 84)) -> Image.Image:
    return Image.new("RGB", size, colour)


def taught_inputs() -> list[EmbedInput]:
    return [
        EmbedInput("Represent the given image with the following question:", "short", colour_image("red")),
        EmbedInput("Represent the given text.", "medium", None),
        EmbedInput("Represent the given image with the following question:", "long", colour_image("blue")),
    ]


def teach(model, processor, inputs, rationales, steps=60, lr=3e-3):
    """A few LM steps so the tiny model writes each row's rationale and then stops with <emb>."""
    tok = processor.tokenizer
    emb_id = tok.convert_tokens_to_ids(EMB_TOKEN)
    rows = process_rows(processor, [prompt_text(processor, x, direct=False) for x in inputs], [x.image for x in inputs])
    suffixes = [tok.encode(r, add_special_tokens=False) + [emb_id] for r in rationales]
    batch = collate(rows, tok.pad_token_id, suffixes)
    labels = torch.full_like(batch["input_ids"], -100)
    for i, s in enumerate(suffixes):
        labels[i, -len(s):] = torch.tensor(s)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return loss.item()


@pytest.fixture(scope="session")
def tiny():
    """A random test-size model and processor (read-only: do not train it in a test)."""
    return micro.build_micro("test", corpus=list(TAUGHT.values()), seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-rge")
    micro.save(*tiny, path)
    return path


@pytest.fixture(scope="session")
def taught():
    """A test-size model taught to write rationales of three different lengths, ending in <emb>."""
    model, processor = micro.build_micro("test", corpus=list(TAUGHT.values()), seed=1)
    inputs = taught_inputs()
    teach(model, processor, inputs, [TAUGHT[x.text] for x in inputs], steps=80)
    return model, processor


@pytest.fixture(scope="session")
def taught_dir(taught, tmp_path_factory):
    path = tmp_path_factory.mktemp("taught-rge")
    micro.save(*taught, path)
    return path


@pytest.fixture()
def taught_encoder(taught):
    return Encoder(*taught)


@pytest.fixture(scope="module")
def app(taught_dir, tmp_path_factory, request):
    """The app in a subprocess on the taught model, one per test module (its own cache folder)."""
    from apprunner import RunningApp

    running = RunningApp(taught_dir, tmp_path_factory.mktemp(request.module.__name__ + "-cache"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def page(app):
    """One headless chromium page on the module's app (tests/browser.py; skips there without chromium)."""
    from browser import open_page

    yield from open_page(app)
