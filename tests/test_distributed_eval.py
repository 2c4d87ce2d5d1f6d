"""`python -m rge_demo eval` sharded over 2 processes (torchrun, gloo on CPU) equals the 1-process run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rge_demo.analysis.evaluate import Shard, evaluate, world_tasks
from rge_demo.embedding.encoder import Encoder

REPO = Path(__file__).resolve().parent.parent
TIMING = re.compile(r"[\d.]+ s/query\.")  # the only line of a table that measures time


def cases(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


@pytest.mark.slow
@pytest.mark.timeout(900)  # two launches of the CLI: about 4 min on a loaded 2-core CPU, 30 s of CPU time
def test_two_processes_give_the_one_process_table(tiny_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RGE_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1"}
    args = ["eval", "--model", str(tiny_dir), "--tasks", "count,ground", "--split", "all", "--queries", "3",
            "--batch-size", "2", "--max-new-tokens", "4", "--device", "cpu"]

    def run(launcher: list[str], out: Path) -> str:
        r = subprocess.run([*launcher, "-m", "rge_demo", *args, "--out", str(out)], capture_output=True, text=True,
                           env=env, cwd=REPO, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        return r.stdout

    run([sys.executable], tmp_path / "one")
    port = str(29600 + os.getpid() % 1000)
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port],
              tmp_path / "two")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2  # really two processes
    assert two.count("### ") == 1  # one table: only the first process prints
    table1, table2 = ((tmp_path / d / "table.md").read_text() for d in ("one", "two"))
    assert TIMING.sub("", table1) == TIMING.sub("", table2) and "| count/ind |" in table1
    assert cases(tmp_path / "one") == cases(tmp_path / "two")  # ranks, top-5 scores, rationales, prompts
    assert sorted(p.name for p in (tmp_path / "two" / "images").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "images").iterdir())


class ThreadGroup:
    """``gather`` for shards run as threads of one process: a barrier-based all-gather."""

    def __init__(self, n: int):
        self.barrier, self.slots = threading.Barrier(n), [None] * n

    def gather(self, index: int):
        def gather(obj):
            self.slots[index] = obj
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before all have read
            return out
        return gather


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reason", "direct"])
def test_shards_deal_out_batches_and_every_shard_holds_the_whole_run(tiny, mode):
    encoder = Encoder(*tiny)
    tasks = world_tasks(["count", "ground"], ("ind",), n=5)
    whole = evaluate(encoder, tasks, mode=mode, batch_size=2, max_new_tokens=3)
    group, runs, seen = ThreadGroup(3), [None] * 3, [[] for _ in range(3)]

    def shard(i):
        runs[i] = evaluate(encoder, tasks, mode=mode, batch_size=2, max_new_tokens=3,
                           shard=Shard(i, 3, group.gather(i)), progress=lambda d, t, i=i: seen[i].append((d, t)))

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    expected = [{k: v for k, v in c.items() if k != "seconds"} for c in whole.cases]
    for i, run in enumerate(runs):
        assert [{k: v for k, v in c.items() if k != "seconds"} for c in run.cases] == expected
        assert run.info["processes"] == 3 and seen[i][-1][0] == seen[i][-1][1]
        assert TIMING.sub("", run.table()) == TIMING.sub("", whole.table())
    with pytest.raises(ValueError, match="shard index"):
        Shard(2, 2)
