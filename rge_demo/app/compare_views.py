"""The Compare tab's extra views, as plain functions over a :class:`~rge_demo.app.demo.Demo`.

* :func:`model_line`: the model in use and its prompt profile.
* :func:`preset_for_instruction`, :func:`preset_for_gallery`: the task preset that goes with an
  instruction an example filled in, or with a gallery just chosen.
* :func:`scene_facts_of`: the synthetic world's ground truth of a query, when the query is one of a
  world gallery's own (matched by its image bytes and text), for the hallucination flag.
* :func:`sample_view`: N sampled rationales of one query at a temperature
  (:mod:`rge_demo.analysis.sampling`), ranked against the gallery.
* :func:`attribution_view`: what each sentence and clause of a rationale does to the cosine with the
  right answer and with the top-1 wrong candidate (:mod:`rge_demo.analysis.attribution`).
* :func:`tcot_view`: Embed-RL beside RGE: a Reasoner model's T-CoT, embedded by the model in use
  (:class:`rge_demo.embedding.pair.ReasonerEmbedder`), ranked against the same gallery.

Every check of a request raises :class:`~rge_demo.app.demo.UserError` (one sentence naming the value).
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rge_demo.analysis.attribution import Attribution, attribute_labelled
from rge_demo.analysis.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE, SampleSet, sample_queries
from rge_demo.data.items import Gallery

from .demo import MAX_K, Demo, UserError, check_int, check_text

MAX_SAMPLES = 32  # samples per request: one generate of up to 32 rows
MAX_SEED = 2**31 - 1


def model_line(demo: Demo, model_name: str | None = None) -> str:
    """``Model: **rge-micro** · prompt profile: **micro** (6 task presets)`` for the session's model."""
    p = demo.presets(model_name)
    return f"Model: **{demo.model_label(model_name)}** · prompt profile: **{p['profile']}** ({len(p['tasks'])} task presets)"


def preset_for_instruction(demo: Demo, model_name: str | None, instruction: str, current: str | None) -> str | None:
    """The preset whose query instruction is ``instruction``: ``current`` if it is one of them (several
    tasks share an instruction), else the first; None when no preset has it."""
    tasks = demo.presets(model_name)["tasks"]
    matching = [name for name, t in tasks.items() if t["query"] == instruction]
    return current if current in matching else next(iter(matching), None)


def preset_for_gallery(demo: Demo, model_name: str | None, gallery: Gallery, current: str | None) -> str | None:
    """The preset for a gallery just chosen: ``current`` if it is one of its queries' tasks, else the first
    of them that has a preset; None when none has (the instruction is left as it is)."""
    tasks = demo.presets(model_name)["tasks"]
    own = [name for name in tasks if name in {q.task for q in gallery.queries}]
    return current if current in own else next(iter(own), None)


# ------------------------------------------------------------------------------ scene facts
_digests: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
_digests_lock = threading.Lock()


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _world_queries(gallery: Gallery) -> dict[tuple[str, str], dict]:
    """{(image sha256 or "", text): scene meta} of a gallery's queries that carry a world scene."""
    key = (gallery.name, str(gallery.root))
    with _digests_lock:
        if key not in _digests:
            found = {}
            for q in gallery.queries:
                meta = q.meta or {}
                if meta.get("kind") not in ("shapes", "chart") or "objects" not in meta:
                    continue
                try:
                    digest = _digest(gallery.image_path(q.image)) if q.image else ""
                except OSError:
                    continue
                found.setdefault((digest, q.text.strip()), meta)
            _digests[key] = found
        return _digests[key]


def scene_facts_of(gallery: Gallery, image, text: str) -> dict | None:
    """:func:`rge_demo.data.world.scene_facts` of the query, when it is one of ``gallery``'s own world
    queries (same image bytes, same text); None for anything else (an own photo, a changed text)."""
    from rge_demo.data import world

    queries = _world_queries(gallery)
    if not queries:
        return None
    try:
        digest = _digest(image) if isinstance(image, (str, Path)) and str(image).strip() else ""
    except OSError:
        return None
    meta = queries.get((digest, (text or "").strip()))
    return world.scene_facts(meta) if meta is not None else None


# ------------------------------------------------------------------------------ sampling
def check_temperature(value) -> float:
    """A sampling temperature from a request: a number in [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise UserError(f"the temperature must be a number above 0 (e.g. 1.0), got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(t) or t <= 0:
        raise UserError(f"the temperature must be above 0 (greedy reasoning is the Compare button), got {value!r}")
    if t < MIN_TEMPERATURE:
        raise UserError(f"the temperature must be at least {MIN_TEMPERATURE:g} (for greedy reasoning use the Compare "
                        f"button), got {t:g}")
    if t > MAX_TEMPERATURE:
        raise UserError(f"the temperature must be at most {MAX_TEMPERATURE:g}, got {t:g}")
    return t


def _right_answer(gallery: Gallery, target_id, what: str) -> int:
    target_id = Demo.check_target(gallery, target_id)
    if target_id is None:
        raise UserError(f"choose the right answer first: {what} is measured against it")
    return gallery.index_of(target_id)


@dataclass
class SampleView:
    """One query's samples (:class:`SampleSet`) with what the page shows beside them."""

    result: SampleSet
    model: str
    gallery: str
    n_items: int
    target_id: str
    target_label: str

    def to_dict(self) -> dict[str, Any]:
        """The API's answer: the sample set's JSON plus the model, gallery and right answer."""
        return {"model": self.model, "gallery": self.gallery, "n_items": self.n_items, "target_id": self.target_id,
                "target_label": self.target_label, **self.result.to_dict()}


def sample_view(demo: Demo, gallery_name: str, image, text: str, instruction: str, target_id, n=8,
                temperature=1.0, seed=0, model_name: str | None = None,
                session_key: str | None = None) -> SampleView:
    """``n`` rationales sampled at ``temperature`` (one batched generate, seeded), each embedded and
    ranked against the gallery, beside the query's direct and greedy embeddings."""
    n = check_int(n, "the number of samples", 1, MAX_SAMPLES)
    temperature = check_temperature(temperature)
    seed = check_int(seed, "the seed", 0, MAX_SEED)
    gallery = demo.gallery(gallery_name, session_key)
    target = _right_answer(gallery, target_id, "each sample")
    inp = demo.make_input(image, text, instruction)
    loaded = demo.model(model_name)
    index = demo.index(gallery.name, model_name, session_key=session_key)
    result = sample_queries(loaded.encoder, [inp], index.matrix, [target], n=n, temperature=temperature, seed=seed,
                            batch_size=max(MAX_SAMPLES, n))[0]
    item = gallery.items[target]
    return SampleView(result, loaded.name, gallery.name, len(gallery.items), item.id, item.label or item.text)


# ------------------------------------------------------------------------------ attribution
def attribution_view(demo: Demo, gallery_name: str, image, text: str, instruction: str, target_id, rationale: str,
                     model_name: str | None = None, session_key: str | None = None) -> Attribution:
    """Leave-one-sentence-out and leave-one-clause-out contributions of ``rationale`` (one batched
    forward), against the right answer and the top-1 wrong candidate (the best-scoring item with
    another label than the right answer's); the labels are filled in."""
    gallery = demo.gallery(gallery_name, session_key)
    target = _right_answer(gallery, target_id, "each part's contribution")
    rationale = check_text(rationale, "rationale")
    if not rationale:
        raise UserError("the rationale is empty: run the comparison (or write one) first")
    inp = demo.make_input(image, text, instruction)
    loaded = demo.model(model_name)
    index = demo.index(gallery.name, model_name, session_key=session_key)
    labels = [it.label or it.text for it in gallery.items]
    return attribute_labelled(loaded.encoder, inp, rationale, index.matrix, target, labels,
                              shown=[_label(gallery, i) for i in range(len(gallery.items))])


def _label(gallery: Gallery, i: int) -> str:
    """An item's label, with its task (``two (count)``) where another item has the same label."""
    item = gallery.items[i]
    label = item.label or item.text or item.id
    repeated = sum((it.label or it.text or it.id) == label for it in gallery.items) > 1
    return f"{label} ({item.id.split('/')[0]})" if repeated and "/" in item.id else label


# ------------------------------------------------------------------------------ Embed-RL
@dataclass
class TCoTView:
    """A Reasoner's T-CoT for one query and the Embedder's (the model in use) ranking after it."""

    side: Any  # rge_demo.analysis.compare.Side
    tcot: str
    tokens: int
    forced: bool
    reasoner: str
    embedder: str


def tcot_view(demo: Demo, gallery_name: str, image, text: str, instruction: str, k, target_id, reasoner_name,
              model_name: str | None = None, session_key: str | None = None) -> TCoTView:
    """Embed-RL's two-model inference on one query: ``reasoner_name`` writes the T-CoT (greedy), the
    model in use embeds query + T-CoT at ``<emb>``; ranked against the gallery like Compare's sides."""
    import time

    from rge_demo.analysis.compare import _side
    from rge_demo.embedding.pair import ReasonerEmbedder

    reasoner_name = check_text(reasoner_name, "Reasoner model", 500)
    if not reasoner_name:
        raise UserError("choose a Reasoner model first: it writes the T-CoT that the model in use embeds")
    k = check_int(k, "k", 1, MAX_K)
    gallery = demo.gallery(gallery_name, session_key)
    target_id = Demo.check_target(gallery, target_id)
    inp = demo.make_input(image, text, instruction)
    # A name this session may use, or a folder it may name (the Models tab's rule: RGE_MODEL_ROOTS, ownership)
    embedder = demo.model(model_name)
    reasoner = demo.workbench.use_model(session_key, reasoner_name, lambda spec: demo.model(spec.name))
    index = demo.index(gallery.name, model_name, session_key=session_key)
    t0 = time.perf_counter()
    out = ReasonerEmbedder(reasoner.encoder, embedder.encoder).reason([inp])[0]
    side = _side(index, out.vector, k, target_id, time.perf_counter() - t0, out.tokens)
    return TCoTView(side, out.rationale, out.tokens, out.forced, reasoner.name, embedder.name)
