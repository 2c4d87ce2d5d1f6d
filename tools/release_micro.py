"""Ship the trained micro models: copy them into assets/, evaluate on two held-out seeds, write saved
runs, tours, cards and the results tables.

    python tools/release_micro.py [--n 100] [--cards-only | --tours-only]

Reads the training runs named in ``configs/lineage.json`` (each model's stages, in order, each one
``python -m rge_demo train --config <config>``) and writes:

* assets/models/<name>/: weights, tokenizer, processor, training/NN-<config>/ (each stage's config
  and metrics), README.md card;
* assets/runs/rge-micro/{reason,direct}/: the saved evaluation of the first seed (the Failures tab);
* assets/tours/*.json: guided tours drafted from those cases;
* assets/results.json and assets/results.md: P@1 with 95 % bootstrap intervals per task, meta-task,
  split and overall for RGE reasoning, RGE direct, baseline and leakage; paired gains; stated-answer
  accuracy and hallucination rate of rge-micro's own rationales; the answer-swap test.

The held-out seeds (``EVAL_SEEDS``) generate the ``ind`` and ``ood`` queries; they were never used
to choose anything in the recipe (the gate and probes use train-distribution queries).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import torch  # noqa: E402

from rge_demo.analysis.evaluate import evaluate, world_tasks  # noqa: E402
from rge_demo.analysis.failures import load_pair  # noqa: E402
from rge_demo.analysis.reasoning import answer_swap, fmt, p1_table, paired_gain, rationale_quality  # noqa: E402
from rge_demo.analysis.tours import draft_tours  # noqa: E402
from rge_demo.data import world  # noqa: E402
from rge_demo.embedding.encoder import Encoder  # noqa: E402
from rge_demo.models.loading import load_checkpoint  # noqa: E402

log = logging.getLogger("release")
ASSETS = REPO / "assets"
SHIPPED = ("rge-micro", "baseline-micro")  # leakage-micro is an ablation: evaluated, not shipped
EVAL_SEEDS = (101, 202)
# (column, model, mode): the paper's Table 1 / Table 6 comparisons on the held-out splits.
COLUMNS = [("RGE reasoning", "rge-micro", "reason"), ("RGE direct", "rge-micro", "direct"),
           ("baseline", "baseline-micro", "direct"), ("leakage", "leakage-micro", "reason")]
TARGETS = {"stated_answer_acc": 0.85, "hallucination_rate": 0.10, "swap_follows": 0.80, "gain": 0.05}
GAINS = {"reasoning - direct": ("RGE reasoning", "RGE direct"),  # paired gains: name -> (column, column)
         "reasoning - baseline": ("RGE reasoning", "baseline"), "leakage - baseline": ("leakage", "baseline")}


LINEAGE = REPO / "configs" / "lineage.json"


def lineage(name: str) -> list[dict]:
    """The stages that trained ``name``, in order: ``{"config", "run"}`` paths (configs/lineage.json)."""
    return json.loads(LINEAGE.read_text())[name]


def wall_seconds(run_dir: Path, rows: list[dict]) -> float | None:
    """The run's wall clock, start to end (model build, probes and checkpoints included): the trainer's
    ``wall_seconds``, else ``/usr/bin/time -v``'s "Elapsed (wall clock)" line in ``run_dir/time.txt``
    (runs from before the trainer recorded it); None when neither is there."""
    walls = [r["wall_seconds"] for r in rows if "wall_seconds" in r]
    if walls:
        return walls[-1]
    timed = run_dir / "time.txt"
    line = next((x for x in timed.read_text().splitlines() if "Elapsed (wall clock)" in x), "") if timed.exists() else ""
    if not line:
        return None
    parts = [float(x) for x in line.rsplit(" ", 1)[-1].split(":")]  # h:mm:ss or m:ss.ss
    return sum(x * 60 ** i for i, x in enumerate(reversed(parts)))


def stage_summary(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "seconds" in r]
    seconds = [r["seconds"] for r in steps]
    median = sorted(seconds)[len(seconds) // 2]
    # A step over 50x the median is a run that was paused (SIGSTOP, to benchmark on quiet cores): not counted.
    paused = [x for x in seconds if x > 50 * median]
    return {"steps": steps[-1]["step"], "step_seconds": round(sum(seconds) - sum(paused)),
            "wall_seconds": wall_seconds(run_dir, rows),
            "paused_steps": len(paused), "paused_seconds": round(sum(paused)), "median_step_seconds": round(median, 2),
            "cold_start_end": next((r["step"] - 1 for r in steps if r["phase"] == "joint"), None),
            "shape_probe": [(r["step"], r["shape_probe"]) for r in rows if "shape_probe" in r]}


def shipped_stage(name: str, i: int, config: str) -> Path:
    """Where :func:`ship` keeps stage ``i`` (1-based) of ``name``: its config and metrics."""
    return ASSETS / "models" / name / "training" / f"{i:02d}-{Path(config).stem}"


def training_summary(name: str) -> list[dict]:
    """One summary per stage of ``name``'s lineage, with its config; a run no longer under runs/ (a fresh
    clone) is read from the shipped copy of its metrics."""
    out = []
    for i, st in enumerate(lineage(name), 1):
        run = REPO / st["run"]
        source = run if (run / "metrics.jsonl").exists() else shipped_stage(name, i, st["config"])
        out.append({**stage_summary(source), **st, "stage": json.loads((REPO / st["config"]).read_text())["stage"]})
    return out


def declare_profile(model_dir: Path, profile: str = "micro") -> None:
    """Write ``rge_profile`` into a micro checkpoint's config.json (runs started before the builder
    wrote the key lack it; without it a checkpoint gets the reference profile)."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    if config.get("rge_profile") != profile:
        config["rge_profile"] = profile
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        log.info("%s: declared prompt profile %r", path, profile)


def model_dir(name: str) -> Path:
    """The model the last stage of ``name``'s lineage wrote."""
    return REPO / lineage(name)[-1]["run"] / "model"


def ship(name: str) -> Path:
    """Copy the model into assets/models/NAME, with every stage's config and metrics under
    ``training/NN-<config name>/``."""
    dest = ASSETS / "models" / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(model_dir(name), dest)
    for i, st in enumerate(lineage(name), 1):
        folder = shipped_stage(name, i, st["config"])
        folder.mkdir(parents=True)
        shutil.copy2(REPO / st["config"], folder / "config.json")
        shutil.copy2(REPO / st["run"] / "metrics.jsonl", folder / "metrics.jsonl")
        if (REPO / st["run"] / "time.txt").exists():
            shutil.copy2(REPO / st["run"] / "time.txt", folder / "time.txt")
    return dest


def encoder_for(model_dir: Path) -> Encoder:
    model, processor = load_checkpoint(model_dir, device="cpu", dtype="float32")
    return Encoder(model, processor)


def measure(model_dirs: dict[str, Path], n: int, seeds=EVAL_SEEDS) -> dict:
    """Every figure of the results tables, per seed."""
    out: dict = {}
    for seed in seeds:
        tasks = world_tasks(None, ("ind", "ood"), n=n, seed=seed)
        per: dict = {"p1": {}, "cases": {}}
        for title, name, mode in COLUMNS:
            t0 = time.perf_counter()
            run = evaluate(encoder_for(model_dirs[name]), tasks, mode=mode, model_name=name)
            run.info["seed"] = seed
            per["cases"][title] = run
            per["p1"][title] = p1_table(run.cases)
            log.info("seed %d %s: %.0f s, P@1 %.3f", seed, title, time.perf_counter() - t0, per["p1"][title]["overall"]["mean"])
        cases = {t: r.cases for t, r in per["cases"].items()}
        per["gain"] = {name: paired_gain(cases[a], cases[b]) for name, (a, b) in GAINS.items()}
        per["quality"] = {t: rationale_quality(cases[t]) for t in ("RGE reasoning", "leakage")}
        per["swap"] = {name: answer_swap(encoder_for(model_dirs[name]), tasks, seed=seed)
                       for name in ("rge-micro", "leakage-micro")}
        out[seed] = per
    return out


# ------------------------------------------------------------------------------------ tables
def _rows(groups: dict) -> list[str]:
    metas = ["classification", "vqa", "retrieval", "grounding"]
    keys = [f"task={t}/split={s}" for t in world.TASKS for s in ("ind", "ood")]
    keys += [f"meta_task={m}" for m in metas] + ["split=ind", "split=ood", "overall"]
    return [k for k in keys if k in groups]


def _label(key: str) -> str:
    return key.replace("task=", "").replace("meta_", "").replace("/split=", " / ").replace("split=", "all ")


def p1_markdown(per: dict) -> str:
    cols = [c for c, _, _ in COLUMNS]
    lines = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for key in _rows(per["p1"][cols[0]]):
        lines.append(f"| {_label(key)} | " + " | ".join(fmt(per["p1"][c][key]) for c in cols) + " |")
    return "\n".join(lines)


def gain_markdown(results: dict) -> str:
    lines = ["| seed | gain (points of P@1) | overall | IND | OOD |", "|---|---|---:|---:|---:|"]
    for seed, per in results.items():
        for name in GAINS:
            g = per["gain"][name]
            lines.append(f"| {seed} | {name} | {fmt(g['overall'])} | {fmt(g['split=ind'])} | {fmt(g['split=ood'])} |")
    return "\n".join(lines)


def quality_markdown(results: dict, column: str = "RGE reasoning", swap_model: str = "rge-micro") -> str:
    seeds = list(results)
    head = " | ".join(f"stated answer {s} | hallucinated {s} | swap follows {s}" for s in seeds)
    lines = [f"| task / split | {head} |", "|---|" + "---:|" * (3 * len(seeds))]
    keys = [f"task={t}/split={s}" for t in world.TASKS for s in ("ind", "ood")] + ["split=ind", "split=ood", "overall"]
    for key in keys:
        cells = []
        for s in seeds:
            q, w = results[s]["quality"][column].get(key), results[s]["swap"][swap_model].get(key)
            cells += [fmt(q["stated_answer_acc"]) if q else "-", fmt(q["hallucination_rate"]) if q else "-",
                      fmt(w["follows"]) if w else "-"]
        lines.append(f"| {_label(key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: dict) -> list[tuple[str, bool, str]]:
    """(target, met, the figures) for each target of the shipped recipe, on every seed."""
    out = []
    for seed, per in results.items():
        q, swap = per["quality"]["RGE reasoning"], per["swap"]["rge-micro"]
        ind = {t: q[f"task={t}/split=ind"] for t in world.TASKS}
        worst = min(ind, key=lambda t: ind[t]["stated_answer_acc"]["mean"])
        out.append((f"seed {seed}: stated-answer accuracy >= .85 on every task in-domain", all(
            v["stated_answer_acc"]["mean"] >= TARGETS["stated_answer_acc"] for v in ind.values()),
            f"worst {worst} {ind[worst]['stated_answer_acc']['mean']:.2f}"))
        hal = q["split=ind"]["hallucination_rate"]["mean"]
        out.append((f"seed {seed}: hallucinated rationales <= 10 % in-domain", hal <= TARGETS["hallucination_rate"],
                    f"{100 * hal:.1f} %"))
        out.append((f"seed {seed}: answer swap followed >= 80 %", swap["overall"]["follows"]["mean"] >= TARGETS["swap_follows"],
                    f"{100 * swap['overall']['follows']['mean']:.1f} %"))
        for name in ("reasoning - direct", "reasoning - baseline"):
            g = per["gain"][name]["overall"]
            out.append((f"seed {seed}: {name} >= +5 points", g["mean"] >= TARGETS["gain"],
                        f"{100 * g['mean']:+.1f} [{100 * g['low']:+.1f}, {100 * g['high']:+.1f}]"))
        gains = per["gain"]["leakage - baseline"]
        g = gains["overall"]
        below = [f"{_label(k)} {100 * v['mean']:+.1f} [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}]"
                 for k, v in gains.items() if k.startswith("task=") and "/split=" in k and v["high"] < 0]
        out.append((f"seed {seed}: leakage below the baseline", g["mean"] < 0, f"{100 * g['mean']:+.1f} points"
                    + (f" (below it on {'; '.join(below)})" if below else "")))
    return out


def compare_examples(model_dir: Path, per_gallery: int = 2) -> list[dict]:
    """The Compare tab's one-click examples: per sample gallery, queries where reasoning visibly helps
    (direct misses, reasoning ranks the answer first, the rationale states it and names nothing the
    scene lacks), best first; galleries without such a query give their first queries instead."""
    from rge_demo.analysis.gallery_eval import gallery_tasks
    from rge_demo.data.galleries import DEFAULT_DIR
    from rge_demo.data.items import Gallery

    encoder = encoder_for(model_dir)
    examples = []
    for folder in sorted(p for p in DEFAULT_DIR.iterdir() if (p / "manifest.json").is_file()):
        gallery = Gallery.load(folder)
        tasks = gallery_tasks(gallery)
        reason = {c["query_id"]: c for c in evaluate(encoder, tasks, mode="reason").cases}
        direct = {c["query_id"]: c for c in evaluate(encoder, tasks, mode="direct").cases}
        def helps(qid):
            r, d = reason[qid], direct[qid]
            return r["correct"] and not d["correct"] and world.answer_of(r["rationale"]) == r["target_label"] \
                and not r["hallucinations"]
        good = sorted((q for q in reason if helps(q)), key=lambda q: (-direct[q]["rank"], q))[:per_gallery]
        chosen = good or [q.id for q in gallery.queries[:per_gallery]]
        examples += [{"gallery": gallery.name, "query_id": q, "reasoning_helps": q in good,
                      "direct_rank": direct[q]["rank"], "reason_rank": reason[q]["rank"],
                      "rationale": reason[q]["rationale"]} for q in chosen]
    return sorted(examples, key=lambda e: not e["reasoning_helps"])  # the default (first) one helps


def results_markdown(results: dict, n: int) -> str:
    parts = [f"<!-- written by tools/release_micro.py: {n} queries per task and split, seeds {list(results)} -->"]
    for seed, per in results.items():
        parts += [f"### P@1 (%) on held-out seed {seed}, 95 % bootstrap intervals", "", p1_markdown(per), ""]
    parts += ["### Paired gains (same queries, 95 % paired bootstrap)", "", gain_markdown(results), "",
              "### rge-micro's own rationales: stated-answer accuracy, hallucination, answer swap (%)", "",
              quality_markdown(results), "", "### Targets", "", "| target | met | figure |", "|---|---|---|"]
    parts += [f"| {t} | {'yes' if ok else '**no**'} | {fig} |" for t, ok, fig in targets(results)]
    return "\n".join(parts) + "\n"


def card(name: str, results_md: str, stages: list[dict]) -> str:
    last = json.loads((REPO / stages[-1]["config"]).read_text())
    notes_file = REPO / "configs" / f"{name}.md"
    notes = notes_file.read_text() if notes_file.exists() else ""
    what = {"rge": "cold start (LM loss on oracle rationales), then joint RGE training (LM + InfoNCE on embeddings "
                   "from self-generated rationales)",
            "cold-start": "LM loss on oracle rationales only", "leakage": "the joint phase with oracle rationales "
            "in the InfoNCE pass (the leakage ablation)",
            "baseline": "contrastive training only (InfoNCE on direct embeddings, no rationales)",
            "joint": "joint RGE training only (LM + InfoNCE on embeddings from self-generated rationales)"}
    rows = [f"| {i} | `python -m rge_demo train --config {st['config']}` | "
            f"{what['joint' if st['stage'] == 'rge' and st['cold_start_end'] == 0 else st['stage']]} | {st['steps']} | "
            f"{st['step_seconds'] / 60:.1f} min (median {st['median_step_seconds']} s/step"
            + (f"; {st['paused_steps']} paused step(s), {st['paused_seconds'] / 60:.0f} min, not counted" if st["paused_steps"] else "")
            + ") | " + (f"{st['wall_seconds'] / 60:.1f} min" if st["wall_seconds"] is not None else "not recorded") + " |"
            for i, st in enumerate(stages, 1)]
    total = sum(st["step_seconds"] for st in stages) / 60
    walls = [st["wall_seconds"] for st in stages]
    wall = f"{sum(walls) / 60:.0f} min wall" if None not in walls else "wall not recorded for every stage"
    probes = stages[-1]["shape_probe"]
    shapes = ", ".join(f"{v:.2f} at step {s}" for s, v in (probes if len(probes) <= 4 else [probes[0], probes[-1]]))
    if len(probes) > 4:
        shapes += f" (lowest {min(v for _, v in probes):.2f}; every probe in the metrics)"
    return f"""# {name}

A micro Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`, 2.9 M parameters, fp32 safetensors) trained
by rge-demo on its synthetic world. Prompt profile: `micro` (`rge_profile` in config.json).

- Data: the world's train split ({last['train_per_task']} examples per task, {len(world.TASKS)} tasks, batches of
  {last['batch_size']}); evaluated on the held-out `ind` and `ood` splits generated with seeds
  {list(EVAL_SEEDS)}, which were never used for tuning.
- Training: {"one command from a fresh model" if len(stages) == 1 else f"{len(stages)} stages, each starting from the previous one's model"}
  (`configs/lineage.json`; one thread; `python tools/release_micro.py` then evaluates the model and
  writes this card): {wall} (model build, probes and checkpoints included), {total:.0f} min of it in steps:

| stage | command | what | steps | step time | wall |
|---|---|---|---:|---:|---:|
{chr(10).join(rows)}

- Vision tower frozen (`vision_lr_scale` 0, the merger trains); linear shape probe on the visual
  tokens{" in the last stage" if len(stages) > 1 else ""}: {shapes or 'not measured'}.
- Configs and per-step metrics (probes included): `training/NN-<config>/`.

{notes}
## Held-out results

{results_md}
"""


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="queries per task and split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cards-only", action="store_true",
                        help="rewrite assets/results.md and the model cards from the committed assets/results.json "
                             "(configs/*.md or this script's tables edited), no evaluation")
    parser.add_argument("--tours-only", action="store_true",
                        help="redraft assets/tours from the committed rge-micro runs (rge_demo/analysis/tours.py "
                             "edited), no evaluation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tours_only:
        write_tours()
        return 0
    if args.cards_only:
        n = int(re.search(r"(\d+) queries per task", (ASSETS / "results.md").read_text()).group(1))
        saved = json.loads((ASSETS / "results.json").read_text())
        md = results_markdown({int(seed): per for seed, per in saved.items()}, n)
        (ASSETS / "results.md").write_text(md)
        for name in SHIPPED:
            (ASSETS / "models" / name / "README.md").write_text(card(name, md, training_summary(name)))
        return 0
    for _, name, _ in COLUMNS:
        declare_profile(model_dir(name))
    for name in SHIPPED:
        ship(name)
    model_dirs = {name: ASSETS / "models" / name if name in SHIPPED else model_dir(name) for _, name, _ in COLUMNS}
    results = measure(model_dirs, args.n)
    first = results[EVAL_SEEDS[0]]["cases"]
    shutil.rmtree(ASSETS / "runs" / "rge-micro", ignore_errors=True)  # runs/probes and runs/embed-rl-micro stay
    first["RGE reasoning"].save(ASSETS / "runs" / "rge-micro" / "reason")
    first["RGE direct"].save(ASSETS / "runs" / "rge-micro" / "direct")
    shutil.rmtree(ASSETS / "runs" / "rge-micro" / "direct" / "images", ignore_errors=True)  # Failures reads reason/images
    md = results_markdown(results, args.n)
    (ASSETS / "results.md").write_text(md)
    (ASSETS / "results.json").write_text(json.dumps(
        {str(seed): {k: v for k, v in per.items() if k != "cases"} for seed, per in results.items()},
        indent=1, sort_keys=True) + "\n")
    for name in SHIPPED:
        (ASSETS / "models" / name / "README.md").write_text(card(name, md, training_summary(name)))
    examples = compare_examples(ASSETS / "models" / "rge-micro")
    (ASSETS / "examples.json").write_text(json.dumps(examples, indent=1) + "\n")
    write_tours()
    log.info("results:\n%s", md)
    return 0


def write_tours() -> None:
    """assets/tours, drafted from the shipped rge-micro runs."""
    cases = load_pair(ASSETS / "runs" / "rge-micro" / "reason", ASSETS / "runs" / "rge-micro" / "direct")
    shutil.rmtree(ASSETS / "tours", ignore_errors=True)
    tours = draft_tours(cases, ASSETS / "tours", "rge-micro")
    log.info("wrote %d tours", len(tours))


if __name__ == "__main__":
    sys.exit(main())
