"""The benchmarks' code paths, run as a user runs them (subprocesses), at test size."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from rge_demo.config import REPO_ROOT


def bench(script: str, *args, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", f"bench.{script.removesuffix('.py')}", *map(str, args)]  # from the repository root
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # a real process: imports torch and transformers (~10 s of CPU)
def test_gpu_bench_tiny_on_cpu():
    r = bench("gpu.py", "--allow-cpu", "--tiny", "-n", 4, "--single-n", 2, "--max-new-tokens", 6)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("model: test-size micro config (--tiny), random weights")
    assert "every rationale forced to 6 tokens" in out
    rows = {}
    for label in ("reasoning, batch 32", "reasoning, batch 8", "reasoning, one at a time (reference)"):
        m = re.search(rf"^{re.escape(label)}\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+n/a \(CPU\)$", out, re.M)
        assert m, f"no row {label!r} in:\n{out}"
        rows[label] = int(m.group(1)), float(m.group(2))
    assert [q for q, _ in rows.values()] == [4, 4, 2] and all(rate > 0 for _, rate in rows.values())
    assert re.search(r"^speed-up over one at a time: batch 32 [\d.]+x, batch 8 [\d.]+x$", out, re.M)


@pytest.mark.slow  # a real process: imports torch and transformers (~10 s of CPU)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("args", [[], ["--allow-cpu"], ["--tiny"]])
def test_gpu_bench_refuses_cpu_in_one_line(args):
    r = bench("gpu.py", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no CUDA GPU found" in r.stderr and "--allow-cpu --tiny" in r.stderr


@pytest.mark.slow
def test_encode_bench_memory_compares_the_read_outs():
    r = bench("encode.py", "--memory", "--size", "test", "--batch-size", 4, "--max-new-tokens", 8,
              "--image-side", 84, "--threads", 1)
    assert r.returncode == 0, r.stderr
    kept = {}
    for label in ("all layers (output_hidden_states)", "hook on the final norm"):
        m = re.search(rf"^{re.escape(label)}\s+([\d.]+) MiB\s+([\d.]+) MiB\s+([\d.]+)$", r.stdout, re.M)
        assert m, f"no row {label!r} in:\n{r.stdout}"
        kept[label] = float(m.group(2))
    assert kept["all layers (output_hidden_states)"] > 50 * kept["hook on the final norm"]
    cos = float(re.search(r"min cosine all-layers vs hook: ([\d.]+)", r.stdout).group(1))
    assert cos >= 0.9999


@pytest.mark.slow
def test_batch_cost_bench_prints_every_batch_size_and_the_free_length_batch():
    r = bench("batch_cost.py", "--tokens", 6)
    assert r.returncode == 0, r.stderr
    ratios = [float(x) for x in re.findall(r"^equal length \(6 tokens\), batch \d+: [\d.]+ s \(([\d.]+)x batch 1\)$",
                                            r.stdout, re.M)]
    assert len(ratios) == 4 and ratios[0] == 1.0 and all(x > 0 for x in ratios)
    m = re.search(r"^free length, 4 queries alone: ([\d., ]+) s; as one batch: [\d.]+ s \(rationale tokens \[([\d, ]+)\]\)$",
                  r.stdout, re.M)
    assert m and len(m.group(1).split(", ")) == 4 and len(m.group(2).split(", ")) == 4


@pytest.mark.slow
def test_compare_prefix_bench_times_both_paths_and_they_agree():
    r = bench("compare_prefix.py", "--tokens", 4, "--image-side", 56, "--repeats", 1)
    assert r.returncode == 0, r.stderr
    rows = re.findall(r"^  ([14]) quer(?:y|ies): two passes [\d.]+ s, shared [\d.]+ s \(two passes / shared = ([\d.]+)x; "
                      r"prompt \d+ tokens; min cosine ([\d.]+)\); processing the queries twice ([\d.]+) ms, once ([\d.]+) ms$",
                      r.stdout, re.M)
    assert [b for b, *_ in rows] == ["1", "4", "1", "4"]  # both models, 1 and 4 queries
    assert all(float(x) > 0 and float(cos) >= 0.9999 and float(once) > 0 for _, x, cos, _, once in rows)


@pytest.mark.slow  # starts the app twice (cold and warm caches) and waits for its Explore maps: ~40 s
def test_app_bench_times_both_blocks_and_the_app_cpu():
    r = bench("app.py", "--runs", 2, "--users", 2, "--repeats", 1, "--max-new-tokens", 16, timeout=420)
    assert r.returncode == 0, r.stderr
    for label, n in (("1 user", 2), ("2 users", 4)):
        assert re.search(rf"^{label}: +first rationale text median [\d.]+ s \| full compare \({n}\) p50 [\d.]+ s, "
                         r"p95 [\d.]+ s, max [\d.]+ s$", r.stdout, re.M), r.stdout
        cpu = re.search(rf"^{label}: the app's CPU ([\d.]+) ms per compare, ([\d.]+) s of CPU per s of wall$",
                        r.stdout, re.M)
        assert cpu and float(cpu.group(1)) > 0 and 0 < float(cpu.group(2)) < os.cpu_count() + 0.5, r.stdout
    assert re.search(r"^2 users: p95 / 1-user median = [\d.]+x \(target <= 2x\)$", r.stdout, re.M)


def test_app_bench_profile_report_splits_the_samples_by_thread(tmp_path, capsys):
    from bench.app import GilProfile

    raw = tmp_path / "prof.txt"
    profile = GilProfile.__new__(GilProfile)  # no py-spy run: the report reads a recorded file
    profile.out = raw
    raw.write_text("thread (11): rge-collector;generate (a.py:1);forward (b.py:2) 6\n"
                   "thread (12): Thread-1 (run);run (asyncio.py:3) 3\n"
                   "thread (13): AnyIO worker thread;compare (c.py:4) 1\n"
                   "thread (11): rge-collector;generate (a.py:1) 2\n")
    profile.report("4 users")
    assert capsys.readouterr().out.strip() == (
        f"4 users: samples holding the GIL (12, {raw}): the collector (model calls) 67%, "
        "the web server's event loop 25%, the handlers 8%")
