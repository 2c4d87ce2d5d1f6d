"""P@1 with 95 % bootstrap intervals, paired gains and rationale checks for saved world eval runs.

    python tools/run_table.py "RGE reasoning=runs/a" "baseline=runs/b" --gain "RGE reasoning-baseline" \
        [--json out.json]

Each ``NAME=FOLDER`` is a run written by ``python -m rge_demo eval --out FOLDER``; the runs compared
by ``--gain A-B`` must hold the same queries. Stated-answer accuracy and the hallucination rate are
given for reasoning-mode runs, in-domain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's rge_demo, whatever is installed

from rge_demo.analysis.evaluate import load_run  # noqa: E402
from rge_demo.analysis.reasoning import fmt, p1_table, paired_gain, rationale_quality  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=FOLDER")
    ap.add_argument("--gain", action="append", default=[], metavar="A-B", help="a paired gain, run A minus run B")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        if not sep:
            ap.error(f"give NAME=FOLDER, got {spec!r}")
        runs[name] = load_run(folder)
    out: dict = {}
    for name, run in runs.items():
        table = p1_table(run.cases)
        out[name] = {"p1": table}
        tasks = "; ".join(f"{k[5:]} {fmt(v)}" for k, v in table.items() if k.startswith("task=") and "/" not in k)
        print(f"{name}: overall {fmt(table['overall'])}, ind {fmt(table['split=ind'])}, "
              f"ood {fmt(table['split=ood'])}\n    {tasks}")
        if run.info.get("mode") == "reason":
            quality = rationale_quality([c for c in run.cases if c["split"] == "ind"])
            out[name]["quality_ind"] = quality
            stated = "; ".join(f"{k[5:]} {v['stated_answer_acc']['mean']:.2f}" for k, v in quality.items()
                               if k.startswith("task=") and "/" not in k)
            print(f"    in-domain stated answers right: {stated}; hallucinated "
                  f"{100 * quality['overall']['hallucination_rate']['mean']:.1f} %")
    for spec in args.gain:
        a, sep, b = spec.partition("-")
        if not sep or a not in runs or b not in runs:
            ap.error(f"--gain A-B names two of the runs given ({', '.join(runs)}), got {spec!r}")
        gain = paired_gain(runs[a].cases, runs[b].cases)
        out[f"{a} - {b}"] = gain
        print(f"{a} - {b}: {fmt(gain['overall'])} (paired)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
