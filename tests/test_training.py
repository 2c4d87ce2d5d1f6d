"""The trainer on the real tiny model: every stage, checkpoints, resume, two processes, bad input."""

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rge_demo.embedding.encoder import Encoder
from rge_demo.embedding.prompts import EmbedInput
from rge_demo.models.loading import load_checkpoint
from rge_demo.training.config import ConfigError, TrainConfig
from rge_demo.training.data import DataError, load_pairs
from rge_demo.training.trainer import latest_checkpoint, load_data, lr_at, sample_batch, shape_probe, train

REPO = Path(__file__).resolve().parent.parent


def config(tmp_path, tiny_dir, stage, **kw):
    base = dict(stage=stage, init=str(tiny_dir), output_dir=str(tmp_path / stage), tasks=["majority_shape"],
                train_per_task=40, steps=12, batch_size=8, lr=3e-3, warmup_steps=2, max_new_tokens=8,
                probe_every=0, save_every=5, threads=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# Contrastive-only training collapses at high learning rates (see the model card), hence 3e-4 there.
@pytest.mark.slow  # 30 steps per stage: 7-22 s of CPU each
@pytest.mark.parametrize("stage,key,lr", [("cold-start", "lm_loss", 3e-3), ("baseline", "contrastive_loss", 3e-4),
                                          ("rge", "loss", 3e-3), ("leakage", "loss", 3e-3)])
def test_each_stage_trains_and_its_checkpoint_embeds(tmp_path, tiny_dir, stage, key, lr):
    cfg = config(tmp_path, tiny_dir, stage, lr=lr, steps=30, batch_size=16, save_every=10,
                 cold_start_steps=6 if stage == "rge" else 0)
    result = train(cfg)
    rows = metrics(cfg.output_dir)
    assert result.status == "finished" and len(rows) == cfg.total_steps == result.steps
    first, last = np.mean([r[key] for r in rows[:5]]), np.mean([r[key] for r in rows[-5:]])
    assert last < first, f"{stage}: {key} did not fall ({first:.3f} -> {last:.3f})"
    if stage == "rge":
        assert [r["phase"] for r in rows] == ["cold-start"] * 6 + ["joint"] * 30
        assert all("rationale_tokens" in r and "emitted_emb" in r for r in rows[6:])
        assert (Path(cfg.output_dir) / "cold-start-model" / "model.safetensors").exists()
    model, processor = load_checkpoint(result.model_dir, device="cpu", dtype="float32")
    vec = Encoder(model, processor).direct([EmbedInput("Represent the given answer.", "three")])
    assert vec.shape == (1, model.config.text_config.hidden_size)


def test_resume_continues_the_step_count(tmp_path, tiny_dir, caplog):
    cfg = config(tmp_path, tiny_dir, "baseline", steps=8, save_every=3)
    stop_at = {"n": 0}

    def should_stop():
        stop_at["n"] += 1
        return stop_at["n"] > 5  # cancel after five steps

    first = train(cfg, should_stop=should_stop)
    assert first.status == "cancelled" and first.steps == 5
    assert latest_checkpoint(Path(cfg.output_dir)).name == "step-000005"
    first_wall = metrics(cfg.output_dir)[-1]["wall_seconds"]
    second = train(cfg)
    assert second.status == "finished" and second.steps == 8
    records = metrics(cfg.output_dir)
    assert [r["step"] for r in records] == list(range(1, 9))
    # The run's wall clock carries over the resume: it goes on from where the first process stopped.
    walls = [r["wall_seconds"] for r in records]
    assert walls == sorted(walls) and walls[5] > first_wall > 0
    # A run already past the steps asked for trains nothing, and says so (QA: "finished after 8 steps", unsaid).
    with caplog.at_level(logging.WARNING, logger="rge_demo.training.trainer"):
        again = train(dataclasses.replace(cfg, steps=2))
    assert again.steps == 8 and len(metrics(cfg.output_dir)) == 8
    assert "is already at step 8, at or past this run's end (2 steps): nothing to train" in caplog.text
    # Resuming the folder as another run (another stage, LoRA on) is refused, naming what differs.
    for other, said in (({"stage": "leakage"}, "stage 'baseline' there, 'leakage' here"),
                        ({"lora": True}, "lora False there, True here")):
        with pytest.raises(ConfigError, match=f"holds another run \\({said}\\)"):
            train(dataclasses.replace(cfg, steps=9, **other))
    respelt = dataclasses.replace(cfg, steps=9, init=str(tiny_dir) + "/.")
    assert train(respelt).steps == 9  # the same folder spelt another way, more steps: the same run goes on


def test_a_second_trainer_on_a_folder_in_training_is_refused(tmp_path, tiny_dir):
    """The same command twice, or a job started again after an app crash: the second stops with a
    sentence, before it loads anything, while the first holds the folder; after it, the run goes on."""
    cfg = config(tmp_path, tiny_dir, "baseline", steps=2)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from rge_demo.training.trainer import run_folder_lock\n"
        "with run_folder_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"), cfg.output_dir],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="another training process is running on this folder"):
            train(cfg)
        assert not (Path(cfg.output_dir) / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train(cfg).status == "finished"


@pytest.mark.slow  # distributed: two trainers of 2 steps, then two more refused
def test_train_command_under_torchrun_locks_the_folder_once(tmp_path, tiny_dir):
    """Two processes of one run share the folder (only the main one takes the lock); while another
    process holds it, every process of a new run stops with the sentence."""
    cfg = config(tmp_path, tiny_dir, "baseline", steps=2, batch_size=4, save_every=0)
    cfg.save(tmp_path / "cfg.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + os.getpid() % 1000), "-m", "rge_demo", "train", "--config", str(tmp_path / "cfg.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [r["step"] for r in metrics(cfg.output_dir)] == [1, 2] and (Path(cfg.output_dir) / "model").is_dir()
    with open(Path(cfg.output_dir) / ".train.lock", "a") as held:
        import fcntl

        fcntl.flock(held, fcntl.LOCK_EX)
        again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert again.returncode != 0
    assert again.stderr.count("another training process is running on this folder") == 2  # both ranks say it


def test_a_run_that_fails_before_training_leaves_no_folder(tmp_path, tiny_dir):
    cfg = config(tmp_path, tiny_dir, "baseline", data=str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="missing.jsonl"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()  # no folder holding only the lock file


@pytest.mark.slow  # distributed: three processes, ~45 s of CPU
def test_two_processes_give_the_single_process_loss_and_gradient(tiny_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = str(REPO / "tests" / "dist_worker.py")

    def run(cmd):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, out.stdout[-2000:] + out.stderr[-3000:]
        return json.loads(line[len("RESULT "):])

    single = run([sys.executable, worker, str(tiny_dir)])
    double = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                  str(29500 + os.getpid() % 1000), worker, str(tiny_dir)])
    for phase, values in single.items():
        for name, value in values.items():
            assert double[phase][name] == pytest.approx(value, rel=2e-3, abs=1e-6), (phase, name)


def test_bad_config_and_data_fail_before_training(tmp_path, tiny_dir):
    with pytest.raises(ConfigError, match="stage must be one of"):
        TrainConfig(stage="magic")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stage": "rge", "stepz": 10}))
    with pytest.raises(ConfigError, match="unknown field.*stepz"):
        TrainConfig.from_file(bad)
    for field, value, what in (("lr", "abc", "a finite number"), ("a_lm", float("nan"), "a finite number"),
                               ("seed", "x", "a whole number"), ("steps", True, "a whole number"),
                               ("lora", "yes", "true or false"), ("output_dir", None, "a string"),
                               ("tasks", "count", "a list of strings")):
        bad.write_text(json.dumps({"stage": "rge", field: value}))
        with pytest.raises(ConfigError, match=f"bad.json: {field} must be {what}, got"):
            TrainConfig.from_file(bad)
    with pytest.raises(ConfigError, match=r"rl_temperature must be in \[0.01, 5\]"):
        TrainConfig(stage="eg-rl", rl_temperature=1e-300)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query_text": "a cat", "target_text": "cat", "query_instruction": 5}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:1: field 'query_instruction' must be a string, got int 5"):
        load_pairs(pairs)
    with pytest.raises(ConfigError, match="unknown world task"):
        train(config(tmp_path, tiny_dir, "baseline", tasks=["count", "juggling"]))
    with pytest.raises(ConfigError, match="task_weights must map task names to positive numbers"):
        TrainConfig(task_weights={"count": 0})
    with pytest.raises(ConfigError, match=r"task_weights names tasks not trained on: \['ground'\]"):
        TrainConfig(tasks=["count"], task_weights={"ground": 2})
    with pytest.raises(ConfigError, match=r"task_weights names task\(s\) \['juggling'\] that the data does not have"):
        train(config(tmp_path, tiny_dir, "cold-start", tasks=[], task_weights={"juggling": 2}))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query_text": "q", "target_image": "missing.png", "rationale": "r"}\n')
    with pytest.raises(DataError, match="missing.png"):
        train(config(tmp_path, tiny_dir, "baseline", data=str(pairs)))
    pairs.write_text("")
    with pytest.raises(DataError, match="no pairs"):
        train(config(tmp_path, tiny_dir, "baseline", data=str(pairs)))
    assert not (tmp_path / "baseline" / "checkpoints").exists()  # nothing trained


def test_a_pairs_file_is_checked_as_an_upload_is(tmp_path, tiny_dir):
    """What QA found ``train --data`` accepting: control tokens (one crashed the first step, others trained
    as tokens), an unknown meta-task beside its instructions, pairs of one target (InfoNCE with nothing to
    tell apart), a missing rationale without its line, a folder named as the file."""
    pairs = tmp_path / "pairs.jsonl"

    def refused(lines: list[dict], match: str, stage: str = "baseline", **kw):
        pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
        with pytest.raises(DataError, match=match):
            train(config(tmp_path, tiny_dir, stage, data=str(pairs), **kw))
        assert not (tmp_path / stage).exists()

    good = [{"query_text": f"q{i}", "target_text": f"t{i}", "rationale": f"r{i}"} for i in range(3)]
    refused([*good, {"query_text": "How many <|image_pad|> are there?", "target_text": "two"}],
            r"pairs.jsonl:4: field 'query_text' contains '<\|image_pad\|>', one of the model's control tokens")
    refused([{**good[0], "rationale": "answer <emb> three"}, *good[1:]],
            r"pairs.jsonl:1: field 'rationale' contains '<emb>'")
    refused([{**good[0], "target_text": "<|im_end|>"}, *good[1:]], r"field 'target_text' contains '<\|im_end\|>'")
    refused([*good[:2], {**good[2], "meta_task": "bogus", "query_instruction": "q", "target_instruction": "t"}],
            r"pairs.jsonl:3: field 'meta_task': unknown task kind 'bogus'")
    refused([{**g, "target_text": "same"} for g in good], r"task 'retrieval': its 3 training pair\(s\) share one "
            "target; stage 'baseline' learns by telling targets apart")
    refused([good[0], {**good[1], "rationale": ""}, {**good[2], "rationale": "  "}],
            r"stage 'rge' needs an oracle rationale on every pair; 2 have none: line\(s\) 2, 3 of \S*pairs.jsonl$",
            stage="rge")
    with pytest.raises(DataError, match="is a folder; give its pairs .jsonl file"):
        load_pairs(tmp_path)


@pytest.mark.slow  # a training run
def test_lora_trains_checkpoints_resumes_merges_and_embeds(tmp_path, tiny_dir):
    """LoRA end to end: the checkpoint holds the adapters, resume continues them, the final model is merged."""
    cfg = config(tmp_path, tiny_dir, "baseline", lora=True, lora_r=4, steps=6, save_every=3, lr=3e-3)
    stop_at = {"n": 0}

    def should_stop():
        stop_at["n"] += 1
        return stop_at["n"] > 3

    first = train(cfg, should_stop=should_stop)
    ckpt = latest_checkpoint(Path(cfg.output_dir))
    assert first.status == "cancelled" and (ckpt / "adapter" / "adapter_config.json").is_file()
    second = train(cfg)
    assert second.status == "finished" and second.steps == 6
    assert [r["step"] for r in metrics(cfg.output_dir)] == list(range(1, 7))
    # the saved model is a plain checkpoint: merged weights under the base names, no lora_ keys
    model, processor = load_checkpoint(second.model_dir, device="cpu", dtype="float32")
    assert not any("lora_" in name for name, _ in model.named_parameters())
    base, _ = load_checkpoint(tiny_dir, device="cpu", dtype="float32")
    name = next(n for n, _ in model.named_parameters() if n.endswith("self_attn.q_proj.weight"))
    assert not torch.equal(dict(model.named_parameters())[name], dict(base.named_parameters())[name])
    mlp = next(n for n, _ in model.named_parameters() if n.endswith("mlp.up_proj.weight"))
    assert torch.equal(dict(model.named_parameters())[mlp], dict(base.named_parameters())[mlp])  # not adapted
    vec = Encoder(model, processor).direct([EmbedInput("Represent the given answer.", "three")])
    assert np.isfinite(vec).all() and vec.shape[0] == 1


def test_learning_rate_follows_the_actual_phases():
    cfg = TrainConfig(stage="rge", lr=1e-3, min_lr=1e-4, warmup_steps=10, cold_start_steps=100,
                      cold_start_max_steps=300, steps=50, joint_lr=3e-4, joint_warmup_steps=5)
    assert lr_at(4, cfg, 100) == pytest.approx(1e-3 * 5 / 10)
    # the cold start decays over its longest possible length, whatever the gate decides
    assert lr_at(90, cfg, 100) == lr_at(90, cfg, 200) > lr_at(190, cfg, 200) > 1e-4
    # the joint phase restarts with its own warm-up and cosine, wherever the gate made it start
    for start in (100, 200, 300):
        assert lr_at(start, cfg, start) == pytest.approx(3e-4 / 5)
        assert lr_at(start + 5, cfg, start) == pytest.approx(3e-4)
        assert lr_at(start + 49, cfg, start) == pytest.approx(1e-4, rel=0.01)
    flat = TrainConfig(stage="baseline", lr=2e-4, min_lr=2e-5, warmup_steps=0, steps=100)
    assert lr_at(0, flat) == pytest.approx(2e-4) and lr_at(100, flat) == pytest.approx(2e-5)


@pytest.mark.slow  # a training run
def test_frozen_vision_tower_keeps_its_weights_and_shape_probe(tmp_path, tiny_dir):
    cfg = config(tmp_path, tiny_dir, "cold-start", vision_lr_scale=0.0, steps=6, probe_every=6, probe_per_task=2)
    before, _ = load_checkpoint(tiny_dir, device="cpu", dtype="float32")
    result = train(cfg)
    after, _ = load_checkpoint(result.model_dir, device="cpu", dtype="float32")
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    tower = [n for n in b if ".visual." in f".{n}" and ".merger." not in n]
    merger = [n for n in b if ".merger." in n]
    assert tower and all(torch.equal(a[n], b[n]) for n in tower)
    assert any(not torch.equal(a[n], b[n]) for n in merger)  # the merger still learns
    rows = metrics(cfg.output_dir)
    assert rows[0]["phase"] == "start" and rows[-1]["step"] == 6
    assert 0 < rows[0]["shape_probe"] <= 1 and 0 < rows[-1]["shape_probe"] <= 1  # before and after, on the merger's output
    assert set(rows[-1]["probe_by_task"]) == {"majority_shape"}
    assert rows[-1]["probe_worst_task_acc"] == min(rows[-1]["probe_by_task"].values())


def test_shape_probe_reads_shapes_from_a_random_tower(tiny):
    model, processor = tiny
    acc = shape_probe(model, processor, n_train=120, n_test=60)
    # 5 classes (4 shapes or empty); about half the cells are empty, so a majority guess gives ~.5
    assert 0.7 < acc <= 1.0


def test_direct_share_trains_a_minority_of_queries_in_direct_mode(tmp_path, tiny_dir):
    with pytest.raises(ConfigError, match="direct_share"):
        TrainConfig(direct_share=0.75)
    cfg = config(tmp_path, tiny_dir, "rge", cold_start_steps=0, steps=2, direct_share=0.25, batch_size=8)
    rows = metrics(train(cfg).output_dir)
    assert all(r["phase"] == "joint" and r["contrastive_loss"] > 0 for r in rows)
    assert all(r["direct_queries"] == 2 and r["reasoned_queries"] == 6 for r in rows)  # 6 of 8 still reasoned


def test_the_trainer_uses_the_checkpoints_prompt_profile(tiny):
    from accelerate import Accelerator

    from rge_demo.embedding.profiles import get_profile
    from rge_demo.embedding.prompts import prompt_text
    from rge_demo.training.trainer import StepContext

    model, processor = tiny
    inp = EmbedInput("Represent the given answer.", "three")
    micro_ctx = StepContext(model, processor, TrainConfig(), Accelerator(cpu=True))
    assert micro_ctx.rows([inp], direct=False)[0].prompt == prompt_text(processor, inp, direct=False)
    model.config.rge_profile = "reference"
    try:
        ctx = StepContext(model, processor, TrainConfig(), Accelerator(cpu=True))
        prompt = ctx.rows([inp], direct=False)[0].prompt
    finally:
        model.config.rge_profile = "micro"
    assert prompt == prompt_text(processor, inp, direct=False, profile=get_profile("reference"))
    assert prompt != micro_ctx.rows([inp], direct=False)[0].prompt


def test_answer_swap_term_embeds_partners_answers_and_trains(tmp_path, tiny):
    from accelerate import Accelerator

    from rge_demo.data import world
    from rge_demo.training.data import world_pairs
    from rge_demo.training.trainer import StepContext

    with pytest.raises(ConfigError, match="swap_weight"):
        TrainConfig(swap_weight=-1)
    model, processor = tiny
    pairs = world_pairs(["count", "majority_shape"], "train", 6, seed=3, wordings=True)
    batch = pairs["count"][:4] + pairs["majority_shape"][:4]
    ctx = StepContext(model, processor, TrainConfig(), Accelerator(cpu=True))
    q_rows = ctx.rows([p.query for p in batch], direct=False)
    states, positives = ctx.answer_swaps(q_rows, batch, step_seed=7)
    by_key = {p.target_key: p for p in batch}
    # in the worded world a target in another wording is another target (a negative), not another
    # answer; the plain world's keys are the candidates, and the trainer reads the config's world
    count = pairs["count"]
    assert len({p.target_key for p in count}) > len({world.answer_of(p.rationale) for p in count})
    assert {p.target_key for p in world_pairs(["count"], "train", 6, seed=3)["count"]} <= {p.target_key.split("|")[0] for p in count}
    for wordings in (False, True):
        pools, _ = load_data(TrainConfig(tasks=["count"], train_per_task=6, seed=3, world_wordings=wordings))
        assert [p.target_key for p in pools["count"]] == [p.target_key for p in world_pairs(["count"], "train", 6, 3, wordings)["count"]]
    # one swapped row per pair that has a partner of its task with another answer
    swapped = [p for p in batch if any(o.task == p.task and world.answer_of(o.rationale) != world.answer_of(p.rationale)
                                       for o in batch)]
    assert states.shape == (len(swapped), model.config.text_config.hidden_size) and len(positives) == len(swapped)
    for p, key in zip(swapped, positives):  # a partner's target: its task, another answer
        partner = by_key[key]
        assert partner.task == p.task and world.answer_of(partner.rationale) not in (None, world.answer_of(p.rationale))
    assert ctx.answer_swaps(q_rows, batch, step_seed=7)[1] == positives  # seeded
    # trained with the term on: it is logged and falls from its first steps
    cfg = TrainConfig(stage="rge", init=str(tmp_path / "m"), output_dir=str(tmp_path / "out"), tasks=["count"],
                      train_per_task=40, cold_start_steps=0, steps=16, batch_size=8, lr=3e-3, warmup_steps=2,
                      max_new_tokens=8, probe_every=0, save_every=0, threads=1, seed=0, swap_weight=1.0)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    rows = metrics(train(cfg).output_dir)
    assert all(r["swap_loss"] > 0 for r in rows)
    assert np.mean([r["swap_loss"] for r in rows[-4:]]) < np.mean([r["swap_loss"] for r in rows[:4]])


def test_the_cold_starts_task_mix_follows_task_weights():
    pools = {t: [f"{t}-{i}" for i in range(50)] for t in ("count", "ground", "relation_colour")}
    weighted = TrainConfig(stage="cold-start", batch_size=32, task_weights={"relation_colour": 4})
    drawn = [p.split("-")[0] for step in range(50) for p in sample_batch(pools, weighted, step, "cold-start")]
    share = drawn.count("relation_colour") / len(drawn)
    assert abs(share - 4 / 6) < 0.04 and drawn.count("count") and drawn.count("ground")  # 4 : 1 : 1
    assert sample_batch(pools, weighted, 3, "cold-start") == sample_batch(pools, weighted, 3, "cold-start")  # resumable
    plain = TrainConfig(stage="cold-start", batch_size=32)
    even = [p.split("-")[0] for step in range(50) for p in sample_batch(pools, plain, step, "cold-start")]
    assert abs(even.count("relation_colour") / len(even) - 1 / 3) < 0.04


def test_the_lm_loss_reads_the_head_at_supervised_positions_only():
    """token_ce runs the head on the supervised positions: the same sum and count as the
    cross-entropy over every position's logits (written out here), and gradients reach the head."""
    from rge_demo.training.losses import token_ce

    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16)
    head = torch.nn.Linear(16, 11, bias=False)
    labels = torch.full((3, 7), -100)
    labels[0, 4:], labels[1, 6:], labels[2, 2:5] = torch.tensor([1, 2, 3]), torch.tensor([4]), torch.tensor([5, 6, 7])
    total, count = token_ce(hidden, labels, head)
    logits = head(hidden)
    expected = sum(-torch.log_softmax(logits[b, i - 1], -1)[labels[b, i]]
                   for b in range(3) for i in range(1, 7) if labels[b, i] != -100)
    assert count.item() == 7
    torch.testing.assert_close(total, expected)
    total.backward()
    assert head.weight.grad.abs().sum() > 0
