"""The synthetic micro world: scenes with known ground truth, MMEB-style tasks, oracle rationales.

Images are 84x84 RGB: a 3x3 grid of 28 px cells, so the micro vision tower sees one visual token
per cell (MICROWORLD.md). A scene is either 2-6 shapes in cells or a three-bar chart. Each task turns
a seeded scene into a query (instruction + question + image), the id of the right candidate in the
task's fixed gallery, and an oracle rationale in ONE canonical form per task: the objects in reading
order with cell names (or the bars), the intermediate step the answer depends on (a tally, a count,
a relation, a subtraction, an edit, a look-up), then ``answer <the target as written>`` last, so
``<emb>`` can read the answer. Every task needs that intermediate step: the answer is never a fixed
property of the image alone.

In the worded world (``wordings=True``; the shipped models and galleries are the plain one) targets
come in wordings (:data:`WORDINGS`), as MMEB's targets are captions in many styles: a word
answer written one of four ways, a crop drawn in one of four styles (:func:`render_single`). A
gallery candidate's wording is fixed by its index, a training target's is drawn at random, and the
oracle rationale ends with the target as written, as a rationale written with the target in view
would. The wording is a detail the query does not determine: a model that writes its own
rationale learns to ignore it, one trained with the oracle inside its InfoNCE pass learns to match
it and then guesses it at test time (the leakage ablation). :func:`answer_of` reads the answer
without its wording.

Splits: ``train``, ``ind`` (same distribution, disjoint scenes) and ``ood`` (held-out
compositions of things that all occur in training: an asked shape with a count, a relation with an
answer colour, a pair of bar colours, a cell with an edit colour or a shape; the rule per task is in
its sampler's docstring and in ``TaskSpec.ood_rule``). Every answer of an ood query is also a
training answer, and every candidate of a task can be the answer in every split.
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
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageDraw

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

RELATION_NAMES = ("above", "below", "left of", "right of")
RELATIONS = {"above": (-1, 0), "below": (1, 0), "left of": (0, -1), "right of": (0, 1)}
HELD_OUT_BAR_PAIRS = (frozenset({"red", "blue"}), frozenset({"green", "purple"}))  # chart_diff ood
MAX_OBJECTS = 6
TEST_BUCKETS = 8

WORDINGS = ("{a}", "plainly {a}", "{a} for sure", "i would say {a}")  # a word answer as written
_WORDING_RES = [re.compile("^" + re.escape(w).replace(re.escape("{a}"), "(.+?)") + "$") for w in WORDINGS[1:]]

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
    else:
        raise ValueError(f"unknown scene kind {scene.kind!r}")
    return img


FRAME = (70, 70, 70)


def render_single(colour: str, shape: str, wording: int = 0) -> Image.Image:
    """A candidate image: one big centred shape, like a cell crop scaled 3x, in the style of its
    wording (0 as it is, 1 framed, 2 smaller, 3 both): a detail the query does not determine."""
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if wording % 2:
        draw.rectangle((0, 0, SIZE - 1, SIZE - 1), outline=FRAME, width=4)
    _draw_shape(draw, shape, SIZE // 2, SIZE // 2, 18 if wording % 4 >= 2 else 30, COLOURS[colour])
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ------------------------------------------------------------------------------- scene sampling
def _scene(rng: random.Random, n: int, cells: dict[int, tuple[str, str]] | None = None,
           avoid: Callable[[str, str], bool] = lambda c, s: False) -> tuple[Obj, ...]:
    """``n`` objects in distinct cells; ``cells`` pins some (cell -> (colour, shape)), the rest are
    random pairs for which ``avoid(colour, shape)`` is false."""
    fixed = dict(cells or {})
    free = rng.sample([c for c in range(9) if c not in fixed], n - len(fixed))
    pool = [(c, s) for c in COLOUR_NAMES for s in SHAPES if not avoid(c, s)]
    pairs = {**fixed, **{cell: rng.choice(pool) for cell in free}}
    objs = [Obj(c, s, rng.choice(("small", "large")), cell, rng.randint(-JITTER, JITTER), rng.randint(-JITTER, JITTER))
            for cell, (c, s) in pairs.items()]
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
# One canonical form per sentence: the model learns what to say, not which of several ways.
def _object_list(objects) -> str:
    return ", ".join(f"{o.cell_name} {o.colour} {o.shape}" for o in sorted(objects, key=lambda o: o.cell))


def _bar_list(bars) -> str:
    return ", ".join(f"{COLUMNS[b.column]} {b.colour} {b.height}" for b in sorted(bars, key=lambda b: b.column))


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


def _fits(split: str, held_out: bool) -> bool:
    """A composition belongs to ood exactly when it is held out."""
    return held_out == (split == "ood")


# --------------------------------------------------------------------------------- task samplers
def _majority_shape(rng: random.Random, split: str) -> Draft | None:
    """3-6 shapes, one of them the unique most frequent. OOD: held-out (majority shape, how many
    times it occurs) pairs - circle 4, square 3, triangle 2 or 6, cross 5; each shape and each
    count still occurs in training, only not together."""
    n = rng.randint(3, MAX_OBJECTS)
    shapes = _majority(rng, n, rng.choice(SHAPES), SHAPES)
    tally = _tally(shapes, SHAPES)
    top = max(tally, key=tally.get)
    if not _fits(split, (SHAPES.index(top) + tally[top]) % 4 == 0):
        return None
    cells = rng.sample(range(9), n)
    objs = _scene(rng, n, {cell: (rng.choice(COLOUR_NAMES), s) for cell, s in zip(cells, shapes)})
    counts = ", ".join(f"{PLURALS[s]} {k}" for s, k in tally.items())
    return Draft(Scene("shapes", objs), "Which shape appears most often?", top, [_object_list(objs), counts],
                 {"count": tally[top]})


def _count(rng: random.Random, split: str) -> Draft | None:
    """2-6 shapes; how many of the asked shape (zero..five). OOD: held-out (asked shape, count)
    pairs - circles 0 or 4, squares 3, triangles 2, crosses 1 or 5."""
    shape, k = rng.choice(SHAPES), rng.randint(0, 5)
    if not _fits(split, (SHAPES.index(shape) + k) % 4 == 0):
        return None
    n = rng.randint(max(2, k), MAX_OBJECTS)
    shapes = [shape] * k + [rng.choice([s for s in SHAPES if s != shape]) for _ in range(n - k)]
    cells = rng.sample(range(9), n)
    objs = _scene(rng, n, {cell: (rng.choice(COLOUR_NAMES), s) for cell, s in zip(cells, shapes)})
    p = PLURALS[shape]
    return Draft(Scene("shapes", objs), f"How many {p} are there?", NUMBERS[k], [_object_list(objs), f"{p} {k}"],
                 {"shape": shape})


def _relation_colour(rng: random.Random, split: str) -> Draft | None:
    """2-6 shapes; the colour of the shape next to the one in a named cell: the cell beside it, then
    what is there. OOD: held-out (relation, answer colour) pairs (relation index + colour index
    divisible by 4); every colour is an answer in training, with the other relations."""
    rel = rng.choice(RELATION_NAMES)
    dr, dc = RELATIONS[rel]
    neighbour = (rng.choice(COLOUR_NAMES), rng.choice(SHAPES))
    if not _fits(split, (RELATION_NAMES.index(rel) + COLOUR_NAMES.index(neighbour[0])) % 4 == 0):
        return None
    anchor_cell = rng.choice([c for c in range(9) if 0 <= c // 3 + dr < 3 and 0 <= c % 3 + dc < 3])
    other_cell = anchor_cell + 3 * dr + dc
    anchor = (rng.choice(COLOUR_NAMES), rng.choice(SHAPES))
    objs = _scene(rng, rng.randint(2, MAX_OBJECTS), {anchor_cell: anchor, other_cell: neighbour})
    at, there = CELLS[anchor_cell], CELLS[other_cell]
    step = f"{rel} the {at} cell is the {there} cell, the {there} object is the {' '.join(neighbour)}"
    return Draft(Scene("shapes", objs), f"What colour is the shape {rel} the {at} object?", neighbour[0],
                 [_object_list(objs), step], {"relation": rel, "cell": at, "beside": there})


def _chart_diff(rng: random.Random, split: str) -> Draft | None:
    """Three bars (left/middle/right), distinct colours, heights 0..3; how much taller the first
    asked bar is than the second (zero..three). OOD: the asked colour pair is held out ({red, blue}
    or {green, purple}); train/ind never ask about those pairs (the bars may still show both)."""
    d = rng.randint(0, 3)
    hb = rng.randint(0, 3 - d)
    ha, hc = hb + d, rng.randint(0, 3)
    a, b = rng.sample(COLOUR_NAMES, 2)
    if not _fits(split, frozenset({a, b}) in HELD_OUT_BAR_PAIRS):
        return None
    c = rng.choice([x for x in COLOUR_NAMES if x not in (a, b)])
    cols = rng.sample(range(3), 3)
    bars = tuple(sorted((Bar(cols[0], a, ha), Bar(cols[1], b, hb), Bar(cols[2], c, hc)), key=lambda x: x.column))
    return Draft(Scene("chart", bars=bars), f"How much taller is the {a} bar than the {b} bar?", NUMBERS[d],
                 [_bar_list(bars), f"{a} {ha} minus {b} {hb} is {d}"], {"colours": [a, b]})


def _edit(rng: random.Random, split: str) -> Draft | None:
    """Composed retrieval: 2-6 shapes; the object in the named cell, recoloured, as a crop image.
    OOD: held-out (cell, new colour) pairs (one in five: cell index + colour index divisible by 5);
    every crop can still be the answer."""
    objs = _scene(rng, rng.randint(2, MAX_OBJECTS))
    target = rng.choice(objs)
    colour = rng.choice([c for c in COLOUR_NAMES if c != target.colour])
    if not _fits(split, (target.cell + COLOUR_NAMES.index(colour)) % 5 == 0):
        return None
    was, now = f"{target.colour} {target.shape}", f"{colour} {target.shape}"
    return Draft(Scene("shapes", objs), f"the {target.cell_name} object, made {colour}", f"{colour}_{target.shape}",
                 [_object_list(objs), f"the {target.cell_name} object is the {was}, made {colour} it is a {now}"],
                 {"cell": target.cell_name, "colour": colour, "result": [colour, target.shape]})


def _ground(rng: random.Random, split: str) -> Draft | None:
    """2-6 shapes; the query names a cell, the answer is the crop of the object there. OOD:
    held-out (cell, shape there) pairs (cell index + shape index divisible by 4); every crop can
    still be the answer."""
    objs = _scene(rng, rng.randint(2, MAX_OBJECTS))
    target = rng.choice(objs)
    if not _fits(split, (target.cell + SHAPES.index(target.shape)) % 4 == 0):
        return None
    cell, tgt = target.cell_name, f"{target.colour} {target.shape}"
    return Draft(Scene("shapes", objs), f"Select the portion of the image that shows the {cell} object.",
                 f"{target.colour}_{target.shape}", [_object_list(objs), f"the {cell} object is the {tgt}"],
                 {"cell": cell})


# ------------------------------------------------------------------------------ candidate sides
def worded(answer: str, k: int) -> str:
    """``answer`` in wording ``k`` of :data:`WORDINGS` (modulo their number)."""
    return WORDINGS[k % len(WORDINGS)].format(a=answer)


def unworded(text: str) -> str:
    """The answer of a worded text ("i would say three" -> "three"); other text as it is."""
    for pattern in _WORDING_RES:
        if m := pattern.match(text):
            return m.group(1)
    return text


Candidates = Callable[[bool], list[tuple[Item, Image.Image | None]]]


def _word(task: str, answer: str, wording: int | None) -> tuple[Item, None]:
    """A word candidate; ``wording`` None: the plain world's (no wording recorded)."""
    meta = {"task": task} if wording is None else {"task": task, "wording": wording}
    return Item(id=f"{task}/{answer}", text=worded(answer, wording or 0), label=answer, meta=meta), None


def _words(task: str, words) -> Candidates:
    """A word task's gallery: each answer once (worded: in the wording of its index)."""
    return lambda wordings=False: [_word(task, w, i % len(WORDINGS) if wordings else None) for i, w in enumerate(words)]


def _crop(task: str, colour: str, shape: str, wording: int | None) -> tuple[Item, Image.Image]:
    """A crop candidate; ``wording`` None: the plain world's (no wording recorded)."""
    meta = {"task": task} if wording is None else {"task": task, "wording": wording}
    suffix = f"_{wording}" if wording else ""
    return (Item(id=f"{task}/{colour}_{shape}", image=f"images/c_{task}_{colour}_{shape}{suffix}.png",
                 label=f"{colour} {shape}", meta=meta), render_single(colour, shape, wording or 0))


def _crops(task: str) -> Candidates:
    """A crop task's gallery: each (colour, shape) once (worded: in the style of colour index + shape index)."""
    return lambda wordings=False: [_crop(task, c, s, (i + j) % len(WORDINGS) if wordings else None)
                                   for i, c in enumerate(COLOUR_NAMES) for j, s in enumerate(SHAPES)]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its meta-task, both MMEB-style instructions, the gallery and the query sampler."""

    name: str
    meta_task: str
    query_instruction: str
    candidate_instruction: str
    build_candidates: Candidates
    build_query: Callable[[random.Random, str], Draft | None]
    test_bucket: Callable[[Scene, dict], bool] = _hash_bucket

    @property
    def ood_rule(self) -> str:
        return " ".join((self.build_query.__doc__ or "").split())


_CLS = "Represent the given image for classification with the following question:"
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("majority_shape", "classification", _CLS, ANSWER_INSTRUCTION,
             _words("majority_shape", SHAPES), _majority_shape),
    TaskSpec("count", "vqa", VQA_INSTRUCTION, ANSWER_INSTRUCTION, _words("count", NUMBERS[:6]), _count),
    TaskSpec("relation_colour", "vqa", VQA_INSTRUCTION, ANSWER_INSTRUCTION,
             _words("relation_colour", COLOUR_NAMES), _relation_colour),
    TaskSpec("chart_diff", "vqa", VQA_INSTRUCTION, ANSWER_INSTRUCTION, _words("chart_diff", NUMBERS[:4]), _chart_diff),
    TaskSpec("edit", "retrieval", "Given an image, find the object with the described change:",
             "Represent the given image.", _crops("edit"), _edit),
    TaskSpec("ground", "grounding", "Represent the given image with the following request:",
             "Represent the given cropped image of the object.", _crops("ground"), _ground),
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


def candidates(task: str, wordings: bool = False) -> list[tuple[Item, Image.Image | None]]:
    """The task's full candidate gallery: (item, image or None), in a fixed order; ``wordings``: the
    worded world's (each candidate in the wording of its index)."""
    return _spec(task).build_candidates(wordings)


def _seed(task: str, split: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{task}|{split}|{seed}".encode()).digest()[:8], "big")


def generate(task: str, split: str, n: int, seed: int = 0, wordings: bool = False) -> list[Example]:
    """``n`` examples of ``task`` for ``split``; the same arguments give byte-identical output.
    ``wordings``: the worded world (a training target in a random wording; the scenes are the same)."""
    spec = _spec(task)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(_seed(task, split, seed))
    wording = random.Random(_seed(task, f"{split}/wording", seed))  # apart, so the scenes stay as they were
    cands = {it.id: (it, img) for it, img in spec.build_candidates(wordings)}
    out: list[Example] = []
    for i in range(n):
        for _ in range(10_000):
            d = spec.build_query(rng, split)
            if d is not None and spec.test_bucket(d.scene, d.ask) == (split != "train"):
                break
        else:
            raise RuntimeError(f"{task}/{split}: no valid scene after 10000 tries")
        target, target_image = cands[f"{task}/{d.answer}"]
        if wordings and split == "train":  # a training target: its answer in a random wording (a crop: style)
            k = wording.randrange(len(WORDINGS))
            target, target_image = _word(task, target.label, k) if target.text else _crop(task, *target.label.split(), k)
        rationale = ". ".join(d.body + [f"answer {worded(target.label, target.meta.get('wording', 0))}"])
        query_image = render(d.scene)
        meta = {**d.scene.to_dict(), "ask": d.ask, "question": d.text}
        q = Query(id=f"{task}-{split}-{i:04d}", instruction=spec.query_instruction, text=d.text,
                  image=f"images/{task}_{split}_{i:04d}.png" if query_image is not None else None,
                  target_id=target.id, task=task, meta_task=spec.meta_task, split=split,
                  rationale=rationale, meta=meta)
        out.append(Example(q, query_image, target, target_image, d.scene, rationale))
    return out


def write_gallery(root, task_names, split: str, n_queries: int, seed: int = 0, name: str | None = None,
                  meta_task: str | None = None, wordings: bool = False) -> Gallery:
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
        for it, img in spec.build_candidates(wordings):
            if img is not None:
                (root / it.image).write_bytes(png_bytes(img))
            items.append(replace(it, meta={**it.meta, "instruction": spec.candidate_instruction}))
    queries: list[Query] = []
    for spec in specs:
        for ex in generate(spec.name, split, n_queries, seed, wordings):
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
        # an edit's result ("made blue it is a blue circle") is named on purpose
        "extra_pairs": {tuple(scene["ask"]["result"])} if isinstance(scene, dict) and "result" in scene.get("ask", {}) else set(),
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
            if pair not in present and pair not in q_pairs and pair not in facts.get("extra_pairs", ()):
                bad.append(f"{pair[0]} {pair[1]}")
    return list(dict.fromkeys(bad))


def answer_of(rationale: str) -> str | None:
    """The text after the last "answer " (trailing punctuation and the wording stripped), or None."""
    hits = list(re.finditer(r"\banswer\s+", rationale))
    if not hits:
        return None
    return unworded(rationale[hits[-1].end():].strip().rstrip(".!").strip()) or None


def swap_answer(rationale: str, new: str) -> str:
    """The rationale with its last ``answer X`` replaced by ``answer <new>``."""
    old = answer_of(rationale)
    if old is None:
        raise ValueError(f"no 'answer X' in the rationale {rationale!r}")
    head = rationale[: rationale.rfind("answer")]
    return f"{head}answer {new}"
