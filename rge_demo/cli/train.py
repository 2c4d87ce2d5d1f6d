"""``python -m rge_demo train``: run :func:`rge_demo.training.trainer.train` with a progress bar.

SIGTERM / SIGINT stop the run cleanly with a checkpoint; running the same command again resumes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from tqdm import tqdm

from .config import ConfigError, TrainConfig
from .data import DataError

log = logging.getLogger(__name__)


HELP = "train or fine-tune an RGE model (stages: cold-start, rge, baseline, leakage); rerun to resume"

ARGUMENTS: list[tuple[tuple, dict]] = [
    (("--config",), {"help": "JSON file with TrainConfig fields; flags below override it"}),
    (("--stage",), {"choices": ["cold-start", "rge", "baseline", "leakage"]}),
    (("--init",), {"help": "micro size to build ('micro', 'test') or a checkpoint folder"}),
    (("--data",), {"help": "'world' or a pairs .jsonl file"}),
    (("--output-dir",), {"dest": "output_dir"}),
    (("--steps",), {"type": int}),
    (("--cold-start-steps",), {"dest": "cold_start_steps", "type": int}),
    (("--batch-size",), {"dest": "batch_size", "type": int}),
    (("--lr",), {"type": float}),
    (("--a-lm",), {"dest": "a_lm", "type": float}),
    (("--a-con",), {"dest": "a_con", "type": float}),
    (("--temperature",), {"type": float}),
    (("--max-new-tokens",), {"dest": "max_new_tokens", "type": int}),
    (("--lora",), {"action": "store_true", "default": None}),
    (("--val-share",), {"dest": "val_share", "type": float}),
    (("--seed",), {"type": int}),
    (("--threads",), {"type": int}),
]




OVERRIDES = ("stage", "init", "data", "output_dir", "steps", "cold_start_steps", "batch_size", "lr", "a_lm",
             "a_con", "temperature", "max_new_tokens", "lora", "val_share", "seed", "threads")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig.from_dict(overrides, source="command line")


def run(args: argparse.Namespace) -> int:
    from .trainer import train  # heavy imports only when training

    logging.getLogger("rge_demo").setLevel(logging.INFO)  # a training log should say what happened

    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = {"requested": False}

    def request_stop(signum, frame):
        log.warning("signal %d: stopping after this step with a checkpoint", signum)
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    bar = tqdm(total=cfg.total_steps, desc=f"train {cfg.stage}", unit="step", file=sys.stderr)

    def on_step(record: dict) -> None:
        bar.total = record["total_steps"]
        bar.n = record["step"]
        if "loss" in record:  # the step-0 probe record has no loss
            bar.set_postfix(loss=f"{record['loss']:.3f}", phase=record["phase"], refresh=False)
        bar.refresh()

    try:
        result = train(cfg, on_step=on_step, should_stop=lambda: stop["requested"])
    except (ConfigError, DataError) as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar.close()
    log.info("%s after %d steps; model: %s", result.status, result.steps, result.model_dir)
    return 0 if result.status == "finished" else 3
