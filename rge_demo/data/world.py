"""The synthetic micro world: scenes with known ground truth, MMEB-style tasks, oracle rationales.

Images are 84x84 RGB: a 3x3 grid of 28 px cells, so the micro vision tower sees one visual token
per cell (MICROWORLD.md). A scene is either shapes in cells, a three-bar chart, a rendered word, or
(text-only) an everyday thing with a known colour. Each task turns a seeded scene into a query
(instruction + question + image), the id of the right candidate in the task's fixed gallery, and an
oracle rationale: objects in reading order with cell names, the intermediate step, then
``answer <candidate text>`` last, so ``<emb>`` can read the answer.

Splits: ``train``, ``ind`` (same distribution, disjoint scenes) and ``ood`` (held-out
compositions, the rule per task is in its sampler's docstring and in ``TaskSpec.ood_rule``).
Train and test scenes are disjoint by construction: a hash of the scene puts it in the test bucket
(1 in 8) or not; train only keeps non-test scenes, ``ind``/``ood`` only test ones.
Everything is deterministic in ``(task, split, seed)``: private ``random.Random`` instances only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont

from rge_demo.data.items import META_TASKS, Gallery, Item, Query

log = logging.getLogger(__name__)

SIZE, CELL = 84, 28
BACKGROUND = (250, 250, 250)
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 90, 220),
           "yellow": (235, 195, 20), "purple": (140, 60, 180)}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
CELLS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
COLUMNS = ("left", "middle", "right")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
RADIUS = {"small": 7, "large": 11}
JITTER = 3
SPLITS = ("train", "ind", "ood")

HELD_OUT_PAIRS = (("green", "triangle"), ("blue", "cross"))  # never in train/ind shape scenes
HELD_OUT_BAR_PAIRS = (frozenset({"red", "blue"}), frozenset({"green", "purple"}))  # chart_diff
HELD_OUT_CAPTION_PAIRS = (frozenset({"red", "green"}), frozenset({"blue", "yellow"}))  # describe
RELATIONS = {"right of": (0, 1), "left of": (0, -1), "above": (-1, 0), "below": (1, 0)}
THINGS = {  # colour -> things; the last one of each list is held out for ood
    "red": ("a tomato", "a strawberry", "a fire engine", "a cherry", "a ladybird"),
    "green": ("grass", "a leaf", "a lime", "a frog", "a cucumber"),
    "blue": ("the sky", "the sea", "a blueberry", "the ocean", "a sapphire"),
    "yellow": ("a banana", "a lemon", "a sunflower", "an egg yolk", "a canary"),
    "purple": ("a plum", "an aubergine", "a grape", "lavender", "a violet"),
}
THING_TEMPLATES = ("the colour of {}", "What colour is {}?", "something coloured like {}",
                   "an image in the colour of {}")
TEST_BUCKETS = 8

VQA_INSTRUCTION = "Represent the given image with the following question:"
ANSWER_INSTRUCTION = "Represent the given answer."


# ---------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Obj:
    """One shape in a grid cell (0..8, reading order), offset from the cell centre by (dx, dy)."""

    colour: str
    shape: str
    size: str
    cell: int
    dx: int = 0
    dy: int = 0

    @property
    def cell_name(self) -> str:
        return CELLS[self.cell]


@dataclass(frozen=True)
class Bar:
    column: int  # 0 left, 1 middle, 2 right
    colour: str
    height: int  # in cells, 0..3


@dataclass(frozen=True)
class Scene:
    """Ground truth of one query. ``kind``: shapes | chart | word | thing (text-only query)."""

    kind: str
    objects: tuple[Obj, ...] = ()
    bars: tuple[Bar, ...] = ()
    text: str = ""  # the rendered word, or the thing of a text-only query
    ink: str = "black"
    font_size: int = 0
    offset: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "objects": [{"colour": o.colour, "shape": o.shape, "size": o.size, "cell": o.cell_name,
                         "dx": o.dx, "dy": o.dy} for o in self.objects],
            "bars": [{"column": COLUMNS[b.column], "colour": b.colour, "height": b.height} for b in self.bars],
            "text": self.text, "ink": self.ink, "font_size": self.font_size, "offset": list(self.offset),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        objs = tuple(Obj(o["colour"], o["shape"], o["size"], CELLS.index(o["cell"]), o.get("dx", 0), o.get("dy", 0))
                     for o in d.get("objects", []))
        bars = tuple(Bar(COLUMNS.index(b["column"]), b["colour"], b["height"]) for b in d.get("bars", []))
        return cls(d["kind"], objs, bars, d.get("text", ""), d.get("ink", "black"), d.get("font_size", 0),
                   tuple(d.get("offset", (0, 0))))


def scene_key(scene: Scene) -> str:
    return json.dumps(scene.to_dict(), sort_keys=True)


def _hash_bucket(scene: Scene, ask: dict) -> bool:
    """True when the scene belongs to the test side (ind/ood); train never sees these scenes."""
    digest = hashlib.sha256(scene_key(scene).encode()).digest()
    return int.from_bytes(digest[:8], "big") % TEST_BUCKETS == 0


# ------------------------------------------------------------------------------------- rendering
def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        h = round(r * 0.85)
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + round(r * 0.8)), (cx + r, cy + round(r * 0.8))], fill=fill)
    elif shape == "cross":
        t = max(2, round(r * 0.35))
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=None)
def _font(size: int):
    """Pillow's embedded scalable font if FreeType is there, else DejaVuSans, else the bitmap default."""
    try:
        font = ImageFont.load_default(size=size)
        if isinstance(font, ImageFont.FreeTypeFont):
            return font
    except (TypeError, OSError, ImportError):
        pass
    for path in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    log.warning("no scalable font found; rendering words with the small bitmap font, scaled up")
    return ImageFont.load_default()


def _draw_word(img: Image.Image, word: str, size: int, offset: tuple[int, int], ink) -> None:
    while True:  # shrink until the word fits with a margin
        font = _font(size)
        x0, y0, x1, y1 = ImageDraw.Draw(img).textbbox((0, 0), word, font=font)
        if x1 - x0 <= SIZE - 10 or size <= 8:
            break
        size -= 1
    cx, cy = SIZE // 2 + offset[0], SIZE // 2 + offset[1]
    if isinstance(font, ImageFont.FreeTypeFont):
        ImageDraw.Draw(img).text((cx, cy), word, fill=ink, font=font, anchor="mm")
        return
    # bitmap fallback: draw small, scale up (at most 3x, to fit) with nearest neighbour, paste centred
    small = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(small).text((1 - x0, 1 - y0), word, fill=255, font=font)
    scale = max(1, min(3, (SIZE - 10) // small.width))
    big = small.resize((small.width * scale, small.height * scale), Image.NEAREST)
    img.paste(Image.new("RGB", big.size, ink), (cx - big.width // 2, cy - big.height // 2), big)


def render(scene: Scene) -> Image.Image | None:
    """The query image of a scene (None for text-only scenes)."""
    if scene.kind == "thing":
        return None
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if scene.kind == "shapes":
        for o in scene.objects:
            row, col = divmod(o.cell, 3)
            cx, cy = col * CELL + CELL // 2 + o.dx, row * CELL + CELL // 2 + o.dy
            _draw_shape(draw, o.shape, cx, cy, RADIUS[o.size], COLOURS[o.colour])
    elif scene.kind == "chart":
        for b in scene.bars:  # a zero bar is a 4 px tab on the baseline so its colour stays visible
            top = SIZE - max(b.height * CELL - 3, 4)
            draw.rectangle((b.column * CELL + 5, top, b.column * CELL + 22, SIZE - 1), fill=COLOURS[b.colour])
    elif scene.kind == "word":
        _draw_word(img, scene.text, scene.font_size, scene.offset, COLOURS.get(scene.ink, (0, 0, 0)))
    else:
        raise ValueError(f"unknown scene kind {scene.kind!r}")
    return img


def render_single(colour: str, shape: str) -> Image.Image:
    """A candidate image: one big centred shape, like a cell crop scaled 3x."""
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    _draw_shape(ImageDraw.Draw(img), shape, SIZE // 2, SIZE // 2, 30, COLOURS[colour])
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ------------------------------------------------------------------------------- scene sampling
def _allowed(colour: str, shape: str, split: str) -> bool:
    return split == "ood" or (colour, shape) not in HELD_OUT_PAIRS


def _complete(rng: random.Random, colours: list, shapes: list, split: str, force_held_out: bool):
    """Fill the ``None`` colours/shapes so that train/ind never hold a held-out pair; with
    ``force_held_out`` turn one free attribute into a held-out pair. None if that is impossible."""
    pairs = []
    for c, s in zip(colours, shapes):
        if c is None:
            c = rng.choice([x for x in COLOUR_NAMES if _allowed(x, s, split)] if s else COLOUR_NAMES)
        if s is None:
            s = rng.choice([x for x in SHAPES if _allowed(c, x, split)])
        if not _allowed(c, s, split):
            return None
        pairs.append((c, s))
    if force_held_out and not any(p in HELD_OUT_PAIRS for p in pairs):
        options = [(i, hc, hs) for i, (c, s) in enumerate(pairs) for hc, hs in HELD_OUT_PAIRS
                   if (colours[i] is None and s == hs) or (shapes[i] is None and c == hc)]
        if not options:
            return None
        i, hc, hs = rng.choice(options)
        pairs[i] = (hc, hs)
    return pairs


def _place(rng: random.Random, pairs, cells: list[int] | None = None) -> tuple[Obj, ...]:
    cells = cells if cells is not None else rng.sample(range(9), len(pairs))
    objs = [Obj(c, s, rng.choice(("small", "large")), cell, rng.randint(-JITTER, JITTER), rng.randint(-JITTER, JITTER))
            for (c, s), cell in zip(pairs, cells)]
    return tuple(sorted(objs, key=lambda o: o.cell))


def _majority(rng: random.Random, n: int, target: str, values: tuple[str, ...]) -> list[str]:
    """n labels in which ``target`` is the unique most frequent one (shuffled)."""
    others = [v for v in values if v != target]
    k_min = next(k for k in range(2, n + 1) if len(others) * (k - 1) >= n - k)
    k = rng.randint(k_min, n)
    labels, counts = [target] * k, {v: 0 for v in others}
    for _ in range(n - k):
        v = rng.choice([v for v in others if counts[v] <= k - 2])
        counts[v] += 1
        labels.append(v)
    rng.shuffle(labels)
    return labels


# ----------------------------------------------------------------------------- rationale pieces
def _object_list(rng: random.Random, objects) -> str:
    objs = sorted(objects, key=lambda o: o.cell)
    t = rng.randrange(3)
    if t == 0:
        return ", ".join(f"{o.cell_name} {o.colour} {o.shape}" for o in objs)
    if t == 1:
        parts = [f"a {o.colour} {o.shape} at {o.cell_name}" for o in objs]
        return "i see " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])
    return "objects: " + "; ".join(f"{o.cell_name} {o.colour} {o.shape}" for o in objs)


def _bar_list(rng: random.Random, bars) -> str:
    bars = sorted(bars, key=lambda b: b.column)
    t = rng.randrange(3)
    if t == 0:
        return ", ".join(f"{COLUMNS[b.column]} {b.colour} bar {b.height}" for b in bars)
    if t == 1:
        return "bars: " + ", ".join(f"{COLUMNS[b.column]} {b.colour} {b.height}" for b in bars)
    return ", ".join(f"the {COLUMNS[b.column]} bar is {b.colour} with height {b.height}" for b in bars)


def _tally(labels, order) -> dict[str, int]:
    return {v: labels.count(v) for v in order if labels.count(v)}


@dataclass
class Draft:
    """What a task sampler returns: the scene, question text, answer key and rationale body."""

    scene: Scene
    text: str
    answer: str  # candidate key: the part of the candidate id after "<task>/"
    body: list[str]  # rationale sentences before "answer ..."
    ask: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------- task samplers
def _majority_colour(rng: random.Random, split: str) -> Draft | None:
    """OOD: every ood scene holds a held-out (colour, shape) pair (green triangle / blue cross)."""
    n = rng.randint(3, 6)
    colours = _majority(rng, n, rng.choice(COLOUR_NAMES), COLOUR_NAMES)
    pairs = _complete(rng, colours, [None] * n, split, force_held_out=split == "ood")
    if pairs is None:
        return None
    objs = _place(rng, pairs)
    tally = _tally([o.colour for o in objs], COLOUR_NAMES)
    top = max(tally, key=tally.get)
    counts = ", ".join(f"{c} {k}" for c, k in tally.items())
    step = rng.choice([f"colour counts: {counts}. most common: {top}", f"{counts}, so {top} appears most often"])
    return Draft(Scene("shapes", objs), "Which colour appears most often?", top, [_object_list(rng, objs), step])


def _majority_shape(rng: random.Random, split: str) -> Draft | None:
    """OOD: every ood scene holds a held-out (colour, shape) pair (green triangle / blue cross)."""
    n = rng.randint(3, 6)
    shapes = _majority(rng, n, rng.choice(SHAPES), SHAPES)
    pairs = _complete(rng, [None] * n, shapes, split, force_held_out=split == "ood")
    if pairs is None:
        return None
    objs = _place(rng, pairs)
    tally = _tally([o.shape for o in objs], SHAPES)
    top = max(tally, key=tally.get)
    counts = ", ".join(f"{PLURALS[s]} {k}" for s, k in tally.items())
    step = rng.choice([f"shape counts: {counts}. most common: {top}", f"{counts}, so the {top} appears most often"])
    return Draft(Scene("shapes", objs), "Which shape appears most often?", top, [_object_list(rng, objs), step])


def _count(rng: random.Random, split: str) -> Draft | None:
    """Answers are uniform over zero..six; the asked shape varies.
    OOD: every ood scene holds a held-out (colour, shape) pair (green triangle / blue cross)."""
    shape, k = rng.choice(SHAPES), rng.randint(0, 6)
    n = rng.randint(max(3, k), 6)
    shapes = [shape] * k + [rng.choice([s for s in SHAPES if s != shape]) for _ in range(n - k)]
    pairs = _complete(rng, [None] * n, shapes, split, force_held_out=split == "ood")
    if pairs is None:
        return None
    objs = _place(rng, pairs)
    p = PLURALS[shape]
    step = rng.choice([f"{p}: {k}", f"number of {p}: {k}", f"counting the {p} gives {k}"])
    return Draft(Scene("shapes", objs), f"How many {p} are there?", NUMBERS[k], [_object_list(rng, objs), step],
                 {"shape": shape})


def _relation_colour(rng: random.Random, split: str) -> Draft | None:
    """The anchor's (colour, shape) is unique in the scene; the asked neighbour is in the adjacent
    cell (right of / left of / above / below). OOD: the anchor is a held-out pair."""
    rel = rng.choice(sorted(RELATIONS))
    dr, dc = RELATIONS[rel]
    anchor_cell = rng.choice([c for c in range(9) if 0 <= c // 3 + dr < 3 and 0 <= c % 3 + dc < 3])
    other_cell = anchor_cell + 3 * dr + dc
    pool = [(c, s) for c in COLOUR_NAMES for s in SHAPES if _allowed(c, s, split)]
    anchor = rng.choice(HELD_OUT_PAIRS) if split == "ood" else rng.choice(pool)
    pool = [p for p in pool if p != anchor]
    answer = rng.choice(COLOUR_NAMES)
    neighbour = rng.choice([p for p in pool if p[0] == answer])
    extra_cells = rng.sample([c for c in range(9) if c not in (anchor_cell, other_cell)], rng.randint(0, 3))
    pairs = [anchor, neighbour] + [rng.choice(pool) for _ in extra_cells]
    objs = _place(rng, pairs, [anchor_cell, other_cell] + extra_cells)
    a, b = f"{anchor[0]} {anchor[1]}", f"{neighbour[0]} {neighbour[1]}"
    step = rng.choice([
        f"the {a} is at {CELLS[anchor_cell]}. {rel} it, at {CELLS[other_cell]}, is a {b}",
        f"the {a} is at {CELLS[anchor_cell]}, so the shape {rel} it is at {CELLS[other_cell]}: {b}",
    ])
    return Draft(Scene("shapes", objs), f"What colour is the shape {rel} the {a}?", answer,
                 [_object_list(rng, objs), step], {"relation": rel, "anchor": list(anchor)})


def _chart_diff(rng: random.Random, split: str) -> Draft | None:
    """Three bars (left/middle/right), distinct colours, heights 0..3; the asked difference is
    uniform over zero..three. OOD: the asked colour pair is held out ({red, blue} or {green,
    purple}); train/ind never ask about those pairs (the bars may still show both colours)."""
    d = rng.randint(0, 3)
    hb = rng.randint(0, 3 - d)
    ha, hc = hb + d, rng.randint(0, 3)
    if split == "ood":
        a, b = rng.sample(sorted(rng.choice(HELD_OUT_BAR_PAIRS)), 2)
    else:
        a, b = rng.choice([(x, y) for x in COLOUR_NAMES for y in COLOUR_NAMES
                           if x != y and frozenset({x, y}) not in HELD_OUT_BAR_PAIRS])
    c = rng.choice([x for x in COLOUR_NAMES if x not in (a, b)])
    cols = rng.sample(range(3), 3)
    bars = tuple(sorted((Bar(cols[0], a, ha), Bar(cols[1], b, hb), Bar(cols[2], c, hc)), key=lambda x: x.column))
    step = rng.choice([f"{a} {ha}, {b} {hb}. {ha} minus {hb} is {d}",
                       f"the {a} bar is {ha} high and the {b} bar is {hb} high. {ha} minus {hb} is {d}"])
    return Draft(Scene("chart", bars=bars), f"How much taller is the {a} bar than the {b} bar?", NUMBERS[d],
                 [_bar_list(rng, bars), step], {"colours": [a, b]})


def _caption_combos() -> list[tuple[str, ...]]:
    """All colour multisets of size 2-3 in fixed colour order (50 captions)."""
    out: list[tuple[str, ...]] = []

    def rec(prefix: tuple[str, ...], start: int):
        if len(prefix) in (2, 3):
            out.append(prefix)
        if len(prefix) < 3:
            for i in range(start, len(COLOUR_NAMES)):
                rec(prefix + (COLOUR_NAMES[i],), i)

    rec((), 0)
    return sorted(out, key=lambda t: (len(t), [COLOUR_NAMES.index(c) for c in t]))


def _caption(combo) -> str:
    tally = _tally(list(combo), COLOUR_NAMES)
    return ", ".join(f"{NUMBERS[k]} {c} {'shape' if k == 1 else 'shapes'}" for c, k in tally.items())


def _caption_key(combo) -> str:
    return "_".join(f"{k}{c}" for c, k in _tally(list(combo), COLOUR_NAMES).items())


def _caption_held_out(combo) -> bool:
    return any(pair <= set(combo) for pair in HELD_OUT_CAPTION_PAIRS)


def _describe(rng: random.Random, split: str) -> Draft | None:
    """2-3 shapes; the caption counts shapes per colour in fixed colour order. OOD: the scene holds
    both red and green, or both blue and yellow - colour combinations train/ind never show."""
    combo = rng.choice([t for t in _caption_combos() if _caption_held_out(t) == (split == "ood")])
    colours = list(combo)
    rng.shuffle(colours)
    pairs = _complete(rng, colours, [None] * len(colours), split, force_held_out=False)
    objs = _place(rng, pairs)
    tally = _tally([o.colour for o in objs], COLOUR_NAMES)
    step = rng.choice(["colour counts: " + ", ".join(f"{c} {k}" for c, k in tally.items()),
                       "by colour, " + ", ".join(f"{c}: {NUMBERS[k]}" for c, k in tally.items())])
    return Draft(Scene("shapes", objs), "", _caption_key(combo), [_object_list(rng, objs), step])


def _text_to_word(rng: random.Random, split: str) -> Draft | None:
    """One colour word drawn large. OOD: the ink is a palette colour other than the word
    (Stroop-style); train/ind ink is always black."""
    word = rng.choice(COLOUR_NAMES)
    ink = rng.choice([c for c in COLOUR_NAMES if c != word]) if split == "ood" else "black"
    scene = Scene("word", text=word, ink=ink, font_size=rng.randint(18, 26),
                  offset=(rng.randint(-4, 4), rng.randint(-JITTER, JITTER)))
    letters = " ".join(word)
    step = rng.choice([f"the letters are {letters}, which spell {word}",
                       f"the image shows the word {word}, spelled {letters}"])
    return Draft(scene, "What word is written in the image?", word, [step])


def _indirect_bucket(scene: Scene, ask: dict) -> bool:
    """Test side for indirect_colour: held-out things, and one template per known thing (a Latin
    square over thing x template), so ind phrasings are never trained on."""
    return ask["thing_index"] == 4 or (ask["thing_index"] + ask["template"]) % len(THING_TEMPLATES) == 0


def _indirect_colour(rng: random.Random, split: str) -> Draft | None:
    """Text-only: the colour of an everyday thing -> the image of a shape in that colour.
    OOD: things never seen in train/ind (the last thing of each colour in THINGS)."""
    colour = rng.choice(COLOUR_NAMES)
    i = 4 if split == "ood" else rng.randrange(4)
    t = rng.randrange(len(THING_TEMPLATES))
    thing = THINGS[colour][i]
    text = THING_TEMPLATES[t].format(thing)
    text = text[0].upper() + text[1:]
    step = rng.choice([f"{thing} is {colour}, so the matching image shows a {colour} shape",
                       f"the colour of {thing} is {colour}. look for a {colour} shape"])
    return Draft(Scene("thing", text=thing), text, colour, [step], {"thing_index": i, "template": t})


def _ground(rng: random.Random, split: str) -> Draft | None:
    """2-6 shapes; the query names a cell, the answer is the crop of the object there.
    OOD: the target object is a held-out pair (green triangle / blue cross)."""
    pool = [(c, s) for c in COLOUR_NAMES for s in SHAPES if _allowed(c, s, split)]
    target = rng.choice(HELD_OUT_PAIRS) if split == "ood" else rng.choice(pool)
    pairs = [target] + [rng.choice(pool) for _ in range(rng.randint(1, 5))]
    cells = rng.sample(range(9), len(pairs))
    objs = _place(rng, pairs, cells)
    cell, tgt = CELLS[cells[0]], f"{target[0]} {target[1]}"
    step = rng.choice([f"the {cell} object is a {tgt}", f"at {cell} there is a {tgt}",
                       f"the object at {cell}: {tgt}"])
    return Draft(Scene("shapes", objs), f"Select the portion of the image that shows the {cell} object.",
                 f"{target[0]}_{target[1]}", [_object_list(rng, objs), step], {"cell": cell})


# ------------------------------------------------------------------------------ candidate sides
def _words(task: str, words) -> Callable[[], list[tuple[Item, Image.Image | None]]]:
    return lambda: [(Item(id=f"{task}/{w}", text=w, label=w, meta={"task": task}), None) for w in words]


def _captions() -> list[tuple[Item, None]]:
    return [(Item(id=f"describe/{_caption_key(t)}", text=_caption(t), label=_caption(t),
                  meta={"task": "describe"}), None) for t in _caption_combos()]


def _crops() -> list[tuple[Item, Image.Image]]:
    return [(Item(id=f"ground/{c}_{s}", image=f"images/c_ground_{c}_{s}.png", label=f"{c} {s}",
                  meta={"task": "ground"}), render_single(c, s)) for c in COLOUR_NAMES for s in SHAPES]


def _swatches() -> list[tuple[Item, Image.Image]]:
    return [(Item(id=f"indirect_colour/{c}", image=f"images/c_indirect_colour_{c}.png", label=c,
                  meta={"task": "indirect_colour"}), render_single(c, "circle")) for c in COLOUR_NAMES]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its meta-task, both MMEB-style instructions, the gallery and the query sampler."""

    name: str
    meta_task: str
    query_instruction: str
    candidate_instruction: str
    build_candidates: Callable[[], list[tuple[Item, Image.Image | None]]]
    build_query: Callable[[random.Random, str], Draft | None]
    test_bucket: Callable[[Scene, dict], bool] = _hash_bucket

    @property
    def ood_rule(self) -> str:
        return " ".join((self.build_query.__doc__ or "").split())


_CLS = "Represent the given image for classification with the following question:"
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("majority_colour", "classification", _CLS, ANSWER_INSTRUCTION,
             _words("majority_colour", COLOUR_NAMES), _majority_colour),
    TaskSpec("majority_shape", "classification", _CLS, ANSWER_INSTRUCTION,
             _words("majority_shape", SHAPES), _majority_shape),
    TaskSpec("count", "vqa", VQA_INSTRUCTION, ANSWER_INSTRUCTION, _words("count", NUMBERS), _count),
    TaskSpec("relation_colour", "vqa", VQA_INSTRUCTION, ANSWER_INSTRUCTION,
             _words("relation_colour", COLOUR_NAMES), _relation_colour),
    TaskSpec("chart_diff", "vqa", VQA_INSTRUCTION, ANSWER_INSTRUCTION, _words("chart_diff", NUMBERS[:4]), _chart_diff),
    TaskSpec("describe", "retrieval", "Find the caption for this image.", "Represent the given caption.",
             _captions, _describe),
    TaskSpec("text_to_word", "retrieval", VQA_INSTRUCTION, ANSWER_INSTRUCTION,
             _words("text_to_word", COLOUR_NAMES), _text_to_word),
    TaskSpec("indirect_colour", "retrieval", "Find an image that matches the given text.", "Represent the given image.",
             _swatches, _indirect_colour, _indirect_bucket),
    TaskSpec("ground", "grounding", "Represent the given image with the following request:",
             "Represent the given cropped image of the object.", _crops, _ground),
)}


# ------------------------------------------------------------------------------------ public API
@dataclass
class Example:
    """One generated query with its right candidate. Images are shared, treat them as read-only."""

    query: Query
    query_image: Image.Image | None
    target: Item
    target_image: Image.Image | None
    scene: Scene
    rationale: str


def _spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    return TASKS[task]


def candidates(task: str) -> list[tuple[Item, Image.Image | None]]:
    """The task's full candidate gallery: (item, image or None), in a fixed order."""
    return _spec(task).build_candidates()


def _seed(task: str, split: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{task}|{split}|{seed}".encode()).digest()[:8], "big")


def generate(task: str, split: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` examples of ``task`` for ``split``; the same arguments give byte-identical output."""
    spec = _spec(task)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(_seed(task, split, seed))
    cands = {it.id: (it, img) for it, img in spec.build_candidates()}
    out: list[Example] = []
    for i in range(n):
        for _ in range(10_000):
            d = spec.build_query(rng, split)
            if d is not None and spec.test_bucket(d.scene, d.ask) == (split != "train"):
                break
        else:
            raise RuntimeError(f"{task}/{split}: no valid scene after 10000 tries")
        target, target_image = cands[f"{task}/{d.answer}"]
        rationale = ". ".join(d.body + [f"answer {target.text or target.label}"])
        query_image = render(d.scene)
        meta = {**d.scene.to_dict(), "ask": d.ask, "question": d.text}
        q = Query(id=f"{task}-{split}-{i:04d}", instruction=spec.query_instruction, text=d.text,
                  image=f"images/{task}_{split}_{i:04d}.png" if query_image is not None else None,
                  target_id=target.id, task=task, meta_task=spec.meta_task, split=split,
                  rationale=rationale, meta=meta)
        out.append(Example(q, query_image, target, target_image, d.scene, rationale))
    return out


def write_gallery(root, task_names, split: str, n_queries: int, seed: int = 0, name: str | None = None,
                  meta_task: str | None = None) -> Gallery:
    """Render ``n_queries`` queries per task plus every task's candidates into ``root`` (PNGs under
    ``images/``, then ``manifest.json``) and return the gallery loaded back from disk.

    Each item's own candidate instruction is in ``item.meta["instruction"]``; the gallery's
    ``candidate_instruction`` is the shared one, or the first task's (with a warning) if they differ.
    """
    root, task_names = Path(root), list(task_names)
    specs = [_spec(t) for t in task_names]
    if meta_task is None:  # the tasks' shared meta-task, or none when they mix
        meta_task = specs[0].meta_task if len({s.meta_task for s in specs}) == 1 else ""
    if meta_task and meta_task not in META_TASKS:
        raise ValueError(f"meta_task {meta_task!r} not in {META_TASKS}")
    instructions = list(dict.fromkeys(s.candidate_instruction for s in specs))
    if len(instructions) > 1:
        log.warning("gallery %s mixes candidate instructions %s; see item.meta['instruction']", root, instructions)
    (root / "images").mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    for spec in specs:
        for it, img in spec.build_candidates():
            if img is not None:
                (root / it.image).write_bytes(png_bytes(img))
            items.append(replace(it, meta={**it.meta, "instruction": spec.candidate_instruction}))
    queries: list[Query] = []
    for spec in specs:
        for ex in generate(spec.name, split, n_queries, seed):
            qid = f"q_{len(queries) + 1:04d}"
            image = None
            if ex.query_image is not None:
                image = f"images/{qid}.png"
                (root / image).write_bytes(png_bytes(ex.query_image))
            queries.append(replace(ex.query, id=qid, image=image))
    gallery = Gallery(name=name or root.name, root=root, items=items, queries=queries,
                      candidate_instruction=instructions[0], meta_task=meta_task,
                      description=f"synthetic micro world: {', '.join(task_names)}; split {split}; seed {seed}")
    gallery.save()
    log.info("wrote gallery %s: %d items, %d queries", root, len(items), len(queries))
    return Gallery.load(root)


# ------------------------------------------------------------------------- ground-truth checks
def scene_facts(scene: Scene | dict) -> dict[str, Any]:
    """Ground truth for hallucination checks. Accepts a Scene or a Query.meta dict; the latter
    also carries the question, whose words ``mention_check`` does not flag."""
    question = scene.get("question", "") if isinstance(scene, dict) else ""
    s = Scene.from_dict(scene) if isinstance(scene, dict) else scene
    shapes = [o.shape for o in s.objects]
    return {
        "kind": s.kind,
        "colours": {o.colour for o in s.objects} | {b.colour for b in s.bars},
        "shapes": set(shapes),
        "objects": [(o.colour, o.shape, o.cell_name) for o in s.objects],
        "counts": {sh: shapes.count(sh) for sh in SHAPES} if s.kind == "shapes" else {},
        "bars": [(COLUMNS[b.column], b.colour, b.height) for b in s.bars],
        "question": question,
    }


_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}


def _mentions(text: str) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    toks = re.findall(r"[a-z]+", text.lower())
    colours = {t for t in toks if t in COLOURS}
    shapes = {_SHAPE_WORDS[t] for t in toks if t in _SHAPE_WORDS}
    pairs = {(a, _SHAPE_WORDS[b]) for a, b in zip(toks, toks[1:]) if a in COLOURS and b in _SHAPE_WORDS}
    return colours, shapes, pairs


def mention_check(rationale: str, facts: dict) -> list[str]:
    """Colour words, shape words and "colour shape" pairs the rationale mentions but the scene lacks
    (words the question itself introduces are allowed). Empty for non-scene tasks."""
    if facts.get("kind") not in ("shapes", "chart"):
        return []
    q_colours, q_shapes, q_pairs = _mentions(facts.get("question", ""))
    present = {(c, s) for c, s, _ in facts["objects"]}
    toks = re.findall(r"[a-z]+", rationale.lower())
    bad: list[str] = []
    for i, tok in enumerate(toks):
        if tok in COLOURS and tok not in facts["colours"] and tok not in q_colours:
            bad.append(tok)
        if tok in _SHAPE_WORDS and _SHAPE_WORDS[tok] not in facts["shapes"] and _SHAPE_WORDS[tok] not in q_shapes:
            bad.append(_SHAPE_WORDS[tok])
        if tok in COLOURS and i + 1 < len(toks) and toks[i + 1] in _SHAPE_WORDS:
            pair = (tok, _SHAPE_WORDS[toks[i + 1]])
            if pair not in present and pair not in q_pairs:
                bad.append(f"{pair[0]} {pair[1]}")
    return list(dict.fromkeys(bad))


def answer_of(rationale: str) -> str | None:
    """The text after the last "answer " (trailing punctuation stripped), or None."""
    hits = list(re.finditer(r"\banswer\s+", rationale))
    if not hits:
        return None
    return rationale[hits[-1].end():].strip().rstrip(".!").strip() or None
