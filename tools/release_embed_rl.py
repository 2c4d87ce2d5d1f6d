"""Ship the Embed-RL micro Reasoner: copy it into assets/, evaluate the pair beside rge-micro and
baseline-micro on the held-out seeds, write its card and the comparison table.

    python tools/release_embed_rl.py [--run runs/eg-rl-micro] [--n 100]

The Reasoner starts as rge-micro and is trained by EG-RL (``python -m rge_demo train --config
configs/eg-rl-micro.json``: GRPO on a frozen rge-micro's retrieval reward); the Embedder of the pair
is rge-micro itself. Before RL the pair is therefore exactly rge-micro (same T-CoT, same <emb>), so
"Embed-RL - RGE" on the same queries is the effect of EG-RL.

Writes assets/models/embed-rl-reasoner-micro/ (weights, training/, README.md),
assets/results-embed-rl.{json,md}, assets/runs/embed-rl-micro/ (the first seed's run pair, for the
Failures tab) and assets/cost-sampling.json (the cost panel's sampled-rationale points). The held-out seeds are release_micro's (never used for tuning).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))

from release_micro import EVAL_SEEDS, _label, _rows, encoder_for  # noqa: E402

from rge_demo.analysis.evaluate import _safe, evaluate, world_tasks  # noqa: E402
from rge_demo.analysis.reasoning import fmt, p1_table, paired_gain, rationale_quality  # noqa: E402
from rge_demo.embedding.pair import ReasonerEmbedder  # noqa: E402

log = logging.getLogger("release-embed-rl")
ASSETS = REPO / "assets"
NAME = "embed-rl-reasoner-micro"
COLUMNS = ("RGE reasoning", "RGE direct", "baseline", "Embed-RL")
EDGE = 60  # steps averaged for the reward before / after RL


def ship(run: Path) -> Path:
    dest = ASSETS / "models" / NAME
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(run / "model", dest)
    (dest / "training").mkdir()
    for f in ("metrics.jsonl", "config.json"):
        shutil.copy2(run / f, dest / "training" / f)
    return dest


def training_summary(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "reward" in r]
    probes = [r for r in rows if "probe_answer_acc" in r]
    mean = lambda rs, k: round(statistics.mean(r[k] for r in rs), 3)  # noqa: E731
    cfg = json.loads((run / "config.json").read_text())
    return {"rl_temperature": cfg["rl_temperature"], "format_weight": cfg["format_weight"], "steps": steps[-1]["step"], "step_seconds": round(sum(r["seconds"] for r in steps)),
            "probe_seconds": round(sum(r.get("probe_seconds", 0) for r in rows)),
            "reward_first": mean(steps[:EDGE], "reward"), "reward_last": mean(steps[-EDGE:], "reward"),
            "retrieval_first": mean(steps[:EDGE], "retrieval_reward"),
            "retrieval_last": mean(steps[-EDGE:], "retrieval_reward"),
            "kl_last": mean(steps[-EDGE:], "kl"), "tcot_tokens_first": mean(steps[:EDGE], "rationale_tokens"),
            "tcot_tokens_last": mean(steps[-EDGE:], "rationale_tokens"),
            "probe_first": probes[0]["probe_answer_acc"], "probe_last": probes[-1]["probe_answer_acc"]}


def measure(n: int) -> dict:
    rge, baseline = encoder_for(ASSETS / "models" / "rge-micro"), encoder_for(ASSETS / "models" / "baseline-micro")
    pair = ReasonerEmbedder(encoder_for(ASSETS / "models" / NAME), rge)
    out = {}
    for seed in EVAL_SEEDS:
        tasks = world_tasks(None, ("ind", "ood"), n=n, seed=seed)
        runs = {}
        for title, encoder, mode in (("RGE reasoning", rge, "reason"), ("RGE direct", rge, "direct"),
                                     ("baseline", baseline, "direct"), ("Embed-RL", pair, "reason")):
            t0 = time.perf_counter()
            runs[title] = evaluate(encoder, tasks, mode=mode, model_name=title)
            log.info("seed %d %s: %.0f s", seed, title, time.perf_counter() - t0)
        if seed == EVAL_SEEDS[0]:  # browsable in the Failures tab, beside assets/runs/rge-micro
            for side, title in (("reason", "Embed-RL"), ("direct", "RGE direct")):
                run = copy.deepcopy(runs[title])
                run.info.update(seed=seed, model=f"{NAME}+rge-micro")
                run.images = {}  # the same queries as rge-micro's run: its images serve both
                for case in run.cases:
                    case["image"] = f"../../rge-micro/reason/images/{_safe(case['query_id'])}.png"
                    if not (ASSETS / "runs" / "rge-micro" / "reason" / case["image"][len("../../rge-micro/reason/"):]).is_file():
                        raise SystemExit(f"{case['query_id']}: not in assets/runs/rge-micro (another seed or n?)")
                run.save(ASSETS / "runs" / "embed-rl-micro" / side)
        cases = {t: r.cases for t, r in runs.items()}
        out[seed] = {
            "p1": {t: p1_table(c) for t, c in cases.items()},
            "gain": {"Embed-RL - RGE reasoning": paired_gain(cases["Embed-RL"], cases["RGE reasoning"]),
                     "Embed-RL - RGE direct": paired_gain(cases["Embed-RL"], cases["RGE direct"]),
                     "Embed-RL - baseline": paired_gain(cases["Embed-RL"], cases["baseline"])},
            "quality": {t: rationale_quality(cases[t]) for t in ("RGE reasoning", "Embed-RL")},
            "cost": {t: {"tokens_mean": r.summary()["tokens_mean"], "seconds_per_query": r.summary()["seconds_per_query"]}
                     for t, r in runs.items()},
        }
    return out


def sampling_cost(n: int, ns=(1, 4, 8), temperature: float = 1.0) -> list[dict]:
    """The cost panel's sampled-rationale points: rge-micro, N samples per query, the centroid vs direct."""
    from rge_demo.analysis.cost import sampling_points
    from rge_demo.analysis.sampling import evaluate_sampling

    rge = encoder_for(ASSETS / "models" / "rge-micro")
    tasks = world_tasks(None, ("ind", "ood"), n=n, seed=EVAL_SEEDS[0])
    by_n = {k: evaluate_sampling(rge, tasks, k, temperature, seed=0) for k in ns}
    return [p.to_dict() for p in sampling_points(by_n, name=f"rge-micro sampled at T={temperature:g}")]


def results_markdown(results: dict, n: int, train: dict) -> str:
    parts = [f"<!-- written by tools/release_embed_rl.py: {n} queries per task and split, seeds {list(results)} -->"]
    for seed, per in results.items():
        lines = ["| | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
        for key in _rows(per["p1"][COLUMNS[0]]):
            lines.append(f"| {_label(key)} | " + " | ".join(fmt(per["p1"][c][key]) for c in COLUMNS) + " |")
        cost = per["cost"]
        lines.append("| T-CoT / rationale tokens | " + " | ".join(f"{cost[c]['tokens_mean']:.1f}" for c in COLUMNS) + " |")
        lines.append("| ms per query (1 thread) | " + " | ".join(f"{1000 * cost[c]['seconds_per_query']:.0f}"
                                                               for c in COLUMNS) + " |")
        for t in ("RGE reasoning", "Embed-RL"):
            q = per["quality"][t]["overall"]
            lines.append(f"| {t}: stated answer right / hallucinated | {fmt(q['stated_answer_acc'])} / "
                         f"{fmt(q['hallucination_rate'])} |" + " |" * (len(COLUMNS) - 1))
        parts += [f"### P@1 (%) on held-out seed {seed}, 95 % bootstrap intervals", "", *lines, ""]
    parts += ["### Paired gains (same queries, 95 % paired bootstrap, points of P@1)", "",
              "| seed | gain | overall | IND | OOD |", "|---|---|---:|---:|---:|"]
    for seed, per in results.items():
        for name, g in per["gain"].items():
            parts.append(f"| {seed} | {name} | {fmt(g['overall'])} | {fmt(g['split=ind'])} | {fmt(g['split=ood'])} |")
    parts += ["", "### Training (train distribution)", "",
              f"- reward (retrieval + {train['format_weight']} x format, sampled at T = {train['rl_temperature']}), mean "
              f"of the first / last {EDGE} steps (one task per step, so steps differ by task): "
              f"{train['reward_first']} -> {train['reward_last']} (retrieval part {train['retrieval_first']} -> "
              f"{train['retrieval_last']}); KL to the reference at the end {train['kl_last']}",
              f"- T-CoT length (sampled): {train['tcot_tokens_first']} -> {train['tcot_tokens_last']} tokens",
              f"- greedy stated-answer accuracy on the probe queries: {train['probe_first']:.3f} -> "
              f"{train['probe_last']:.3f}",
              f"- {train['steps']} steps, {train['step_seconds']} s of step time + {train['probe_seconds']} s of probes"]
    return "\n".join(parts) + "\n"


def card(results_md: str) -> str:
    cfg = json.loads((ASSETS / "models" / NAME / "training" / "config.json").read_text())
    # Started from the release's rge-micro run (the model shipped as assets/models/rge-micro) or from the shipped copy.
    shipped = cfg["init"] == "assets/models/rge-micro"
    init_flag = "" if shipped else f" --init {cfg['init']}"
    origin = "" if shipped else "from the run that `tools/release_micro.py` shipped as rge-micro, "
    notes_file = REPO / "configs" / "eg-rl-micro.md"
    notes = notes_file.read_text() if notes_file.exists() else ""
    return f"""# {NAME}

The Reasoner of an Embed-RL pair (arXiv 2602.13823) in rge-demo's micro world: rge-micro (a micro
Qwen2.5-VL, 2.9 M parameters) trained by Embedder-Guided RL. Use it with **rge-micro as the
Embedder**: the Reasoner writes the T-CoT (evidence, the intermediate result, `answer X`), the
Embedder embeds query + T-CoT at `<emb>` and embeds the candidates.

- Training: `python -m rge_demo train --config configs/eg-rl-micro.json{init_flag}` (stage `eg-rl`, {origin}seed
  {cfg['seed']}, one thread): per step {cfg['batch_size']} world queries of one task, {cfg['group_size']} T-CoTs
  each sampled at T = {cfg['rl_temperature']}; reward = the frozen rge-micro's softmax probability
  (temperature {cfg['reward_temperature']}) of the right target among the batch's targets + {cfg['format_weight']} x
  (the T-CoT ends in `answer X` with X a batch answer); GRPO with clip {cfg['clip_eps']} and KL
  {cfg['kl_beta']} to rge-micro; lr {cfg['lr']} -> {cfg['min_lr']} (cosine), {cfg['steps']} steps.
- Evaluation: `python tools/release_embed_rl.py`, on the held-out `ind` and `ood` splits of seeds
  {list(EVAL_SEEDS)} (never used for tuning; one earlier attempt was judged on the training
  distribution only, below).
- Before RL the pair is exactly rge-micro, so "Embed-RL - RGE reasoning" is the effect of EG-RL.

{notes}
## Held-out results

{results_md}
"""


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(REPO / "runs" / "eg-rl-micro"), help="the eg-rl training folder")
    parser.add_argument("--n", type=int, default=100, help="queries per task and split")
    parser.add_argument("--sampling-n", type=int, default=25, help="queries per task and split for the sampling points")
    args = parser.parse_args()
    run = Path(args.run)
    ship(run)
    train = training_summary(run)
    results = measure(args.n)
    cost = sampling_cost(args.sampling_n)
    (ASSETS / "cost-sampling.json").write_text(json.dumps(cost, indent=1) + "\n")
    md = results_markdown(results, args.n, train)
    (ASSETS / "results-embed-rl.md").write_text(md)
    slim = {str(s): per for s, per in results.items()}
    (ASSETS / "results-embed-rl.json").write_text(json.dumps({"n": args.n, "training": train, "seeds": slim},
                                                             indent=1, sort_keys=True) + "\n")
    (ASSETS / "models" / NAME / "README.md").write_text(card(md))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
