"""Ship the trained micro models: copy them into assets/, evaluate, write saved runs, tours and cards.

    python tools/release_micro.py [--runs runs] [--n 100]

Reads the training folders made by ``python -m rge_demo train --config configs/<name>.json``
(runs/rge-micro, runs/baseline-micro, runs/leakage-micro), and writes:
assets/models/<name>/ (weights, tokenizer, processor, training/ metrics and config, README.md card),
assets/runs/<name>/<mode>/ (saved evaluation runs the Failures tab browses), assets/tours/*.json,
and assets/results.md (the comparison table quoted in the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a script beside the package, run from anywhere

import torch  # noqa: E402

from rge_demo.analysis.evaluate import evaluate, world_tasks  # noqa: E402
from rge_demo.analysis.failures import load_pair  # noqa: E402
from rge_demo.analysis.report import compare_runs  # noqa: E402
from rge_demo.analysis.tours import draft_tours  # noqa: E402
from rge_demo.embedding.encoder import Encoder  # noqa: E402
from rge_demo.models.loading import load_checkpoint  # noqa: E402

log = logging.getLogger("release")
ASSETS = REPO / "assets"
SHIPPED = ("rge-micro", "baseline-micro")  # leakage-micro is an ablation: evaluated, not shipped
# (column title, model, mode): the paper's Table 1 / Table 6 comparisons on the held-out splits.
COLUMNS = [("RGE reasoning", "rge-micro", "reason"), ("RGE direct", "rge-micro", "direct"),
           ("baseline", "baseline-micro", "direct"), ("leakage (oracle in InfoNCE), reasoning", "leakage-micro", "reason")]


def training_summary(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    probes = [(r["step"], r["probe_answer_acc"]) for r in rows if r.get("probe_answer_acc") is not None]
    return {"steps": rows[-1]["step"], "train_seconds": round(sum(r["seconds"] for r in rows)),
            "last_probe": probes[-1] if probes else None,
            "cold_start_end": next((r["step"] - 1 for r in rows if r["phase"] == "joint"), None)}


def ship(name: str, runs: Path) -> Path:
    src, dest = runs / name / "model", ASSETS / "models" / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    (dest / "training").mkdir()
    for f in ("metrics.jsonl", "config.json"):
        shutil.copy2(runs / name / f, dest / "training" / f)
    return dest


def run_eval(model_dir: Path, name: str, mode: str, n: int, out: Path) -> dict:
    model, processor = load_checkpoint(model_dir, device="cpu", dtype="float32")
    encoder = Encoder(model, processor)
    t0 = time.perf_counter()
    run = evaluate(encoder, world_tasks(None, ("ind", "ood"), n=n), mode=mode, model_name=name)
    run.save(out)
    log.info("%s %s: %.0f s, overall P@1 %.3f", name, mode, time.perf_counter() - t0,
             run.summary()["metrics"]["overall"]["p@1"])
    return run.summary()


def card(name: str, summary: dict, table: str, train: dict) -> str:
    cfg = json.loads((ASSETS / "models" / name / "training" / "config.json").read_text())
    notes_file = REPO / "configs" / f"{name}.md"
    notes = notes_file.read_text() if notes_file.exists() else ""
    stage = {"rge": "a cold start (LM loss on oracle rationales) followed by joint RGE training "
                    "(LM + InfoNCE on embeddings from self-generated rationales)",
             "baseline": "contrastive training only (InfoNCE on direct embeddings, no rationales)"}[cfg["stage"]]
    return f"""# {name}

A micro Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`, {summary.get('parameters', '2.9 M')} parameters,
fp32 safetensors) trained by rge-demo on its synthetic world with {stage}. It is the app's offline default
(`rge-micro`) or its no-reasoning baseline (`baseline-micro`): same data, same seed, same step budget.

- Data: the synthetic world's train split ({cfg['train_per_task']} examples per task, all nine tasks,
  one task per batch of {cfg['batch_size']}); evaluated on the held-out `ind` and `ood` test splits,
  never used for tuning.
- Command: `python -m rge_demo train --config configs/{name}.json` (seed {cfg['seed']}, one thread);
  then `python tools/release_micro.py` evaluates it and writes this card.
- Training: {train['steps']} steps, {train['train_seconds']} s of step time on a 2-core CPU
  (other work shared the machine){'' if train['cold_start_end'] is None else f"; cold start until step {train['cold_start_end']}"}{'' if not train['last_probe'] else f"; last probe of self-generated answers: {train['last_probe'][1]:.2f} right at step {train['last_probe'][0]}"}.
- Config: `training/config.json`; per-step metrics: `training/metrics.jsonl`.

## Held-out results (P@1, {summary['n']} queries per mode)

{table}
{notes}
How the run went and what it means: see the project README, section "Does reasoning help here?".
"""


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(REPO / "runs"), help="training output folders")
    parser.add_argument("--n", type=int, default=100, help="queries per task and split")
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = Path(args.runs)
    for name in SHIPPED:
        ship(name, runs)
    summaries = {}
    for title, name, mode in COLUMNS:
        model_dir = ASSETS / "models" / name if name in SHIPPED else runs / name / "model"
        summaries[title] = run_eval(model_dir, name, mode, args.n, ASSETS / "runs" / name / mode)
    for name in ("baseline-micro", "leakage-micro"):  # only rge-micro's runs are browsed: keep the rest small
        shutil.rmtree(ASSETS / "runs" / name, ignore_errors=True)
    shutil.rmtree(ASSETS / "runs" / "rge-micro" / "direct" / "images")  # the Failures tab reads reason/images
    table = compare_runs(summaries)
    (ASSETS / "results.md").write_text(table)
    (ASSETS / "results.json").write_text(json.dumps(
        {t: s["metrics"] for t, s in summaries.items()}, indent=1, sort_keys=True) + "\n")
    for name in SHIPPED:
        (ASSETS / "models" / name / "README.md").write_text(card(name, summaries[COLUMNS[0][0]] if name == "rge-micro"
                                                                else summaries["baseline"], table,
                                                                training_summary(runs / name)))
    cases = load_pair(ASSETS / "runs" / "rge-micro" / "reason", ASSETS / "runs" / "rge-micro" / "direct")
    shutil.rmtree(ASSETS / "tours", ignore_errors=True)
    tours = draft_tours(cases, ASSETS / "tours", "rge-micro")
    log.info("wrote %d tours; results:\n%s", len(tours), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
