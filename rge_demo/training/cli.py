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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON file with TrainConfig fields; flags below override it")
    p.add_argument("--stage", choices=["cold-start", "rge", "baseline", "leakage"])
    p.add_argument("--init", help="micro size to build ('micro', 'test') or a checkpoint folder")
    p.add_argument("--data", help="'world' or a pairs .jsonl file")
    p.add_argument("--output-dir", dest="output_dir")
    p.add_argument("--steps", type=int)
    p.add_argument("--cold-start-steps", dest="cold_start_steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--a-lm", dest="a_lm", type=float)
    p.add_argument("--a-con", dest="a_con", type=float)
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("--lora", action="store_true", default=None)
    p.add_argument("--val-share", dest="val_share", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)


OVERRIDES = ("stage", "init", "data", "output_dir", "steps", "cold_start_steps", "batch_size", "lr", "a_lm",
             "a_con", "temperature", "max_new_tokens", "lora", "val_share", "seed", "threads")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig.from_dict(overrides, source="command line")


def run(args: argparse.Namespace) -> int:
    from .trainer import train  # heavy imports only when training

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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="rge_demo train", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
