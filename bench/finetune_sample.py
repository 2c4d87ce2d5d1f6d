"""The Train tab's path without a browser: sample upload -> dataset -> job -> before/after P@1.

    python -m bench.finetune_sample [--steps 40] [--batch-size 8]

Fine-tunes the shipped rge-micro (stage rge: joint LM + InfoNCE) on assets/sample_upload in a
background job, exactly as the tab does, and prints seconds per step and P@1 before and after on
the held-out validation share (25 %, 10 pairs: a smoke figure, not a benchmark of quality).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rge_demo.config import Settings
from rge_demo.models.manager import ModelManager
from rge_demo.app.sessions import new_key
from rge_demo.app.workbench import Workbench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    key = new_key()  # one session, as one browser would be
    with tempfile.TemporaryDirectory() as tmp:
        bench = Workbench(Path(tmp) / "jobs", ModelManager(Settings(cache_dir=Path(tmp))))
        upload, report = bench.sample_upload(key)
        v1 = bench.build(key, upload.name, report, skip_bad=False)
        v2 = bench.save_drafts(key, v1.id, bench.drafts(key, v1.id))  # template rationales for rows without one
        job = bench.launch(key, v2.id, "rge-micro", "rge", args.steps, args.batch_size, 1e-4, 0.1, 1.0, 0.03, False,
                           48, 0.25, "sample fine-tune")
        t0 = time.perf_counter()
        while (progress := bench.progress(key, job.id))["status"] not in ("finished", "failed", "cancelled"):
            time.sleep(2)
        print(f"job {progress['status']} in {time.perf_counter() - t0:.0f} s wall; "
              f"{progress['metrics']['seconds'].mean():.2f} s per step (batch {args.batch_size})")
        print(bench.results(key, job.id).to_string(index=False))
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
