"""``train``: run :func:`rge_demo.training.trainer.train` with the CLI's progress bar.

SIGTERM / SIGINT stop the run cleanly with a checkpoint (exit code 3); running the same command
again resumes.
"""

from __future__ import annotations

import argparse
import logging
import signal

from rge_demo.training.config import STAGES

from .common import EXIT_OK, EXIT_STOPPED, Progress, UsageError, arg, command

log = logging.getLogger(__name__)

HELP = ("train or fine-tune an RGE model (stages: cold-start, rge, baseline, leakage), or an Embed-RL Reasoner by "
        "EG-RL (eg-rl) or Embedder (embedder); rerun to resume")

ARGUMENTS: list[tuple[tuple, dict]] = [
    arg("--config", path=True, help="JSON file with TrainConfig fields; flags below override it"),
    arg("--stage", choices=list(STAGES), help="what to train (default rge)"),
    arg("--init", path=True, help="micro size to build ('micro', 'test') or a checkpoint folder (default micro)"),
    arg("--data", path=True, help="'world' (the synthetic world, the default) or a pairs .jsonl file"),
    arg("--output-dir", dest="output_dir", path=True,
        help="run folder: checkpoints, metrics, the final model in <folder>/model (default runs/train); "
             "a folder holding a run resumes it"),
    arg("--steps", type=int, minimum=1, help="optimizer steps (rge: of the joint phase, after the cold start; "
                                             "default 300)"),
    arg("--cold-start-steps", dest="cold_start_steps", type=int, minimum=0,
        help="rge: LM-only steps before the joint phase (default 0)"),
    arg("--batch-size", dest="batch_size", type=int, minimum=1, help="pairs per step (default 32)"),
    arg("--lr", type=float, help="peak learning rate (default 1e-3)"),
    arg("--a-lm", dest="a_lm", type=float, help="weight of the LM loss on oracle rationales (default 0.1)"),
    arg("--a-con", dest="a_con", type=float, help="weight of the InfoNCE loss (default 1.0)"),
    arg("--temperature", type=float, help="InfoNCE temperature (default 0.03)"),
    arg("--max-new-tokens", dest="max_new_tokens", type=int, minimum=1,
        help="rationale budget when generating during training (default 80)"),
    arg("--lora", action="store_true", default=None, help="train LoRA adapters, merged into the saved model"),
    arg("--val-share", dest="val_share", type=float,
        help="share of a pairs file held out for validation (default 0)"),
    arg("--reasoner", path=True,
        help="embedder: the frozen Reasoner whose T-CoTs the Embedder reads (default: oracle rationales)"),
    arg("--embedder", path=True, help="eg-rl: the frozen Embedder's checkpoint folder (default: a frozen copy of --init)"),
    arg("--group-size", dest="group_size", type=int, minimum=2, help="eg-rl: T-CoTs sampled per query"),
    arg("--rl-temperature", dest="rl_temperature", type=float, help="eg-rl: sampling temperature of the T-CoTs"),
    arg("--kl-beta", dest="kl_beta", type=float, help="eg-rl: weight of the KL penalty to the Reasoner before RL"),
    arg("--seed", type=int, help="seed of the data order and the model build (default 0)"),
    arg("--threads", type=int, minimum=0, help="torch threads (default 0: torch's own choice)"),
]

EG_RL_ONLY = ("group_size", "rl_temperature", "kl_beta")  # (reasoner and embedder: checked by TrainConfig)
OVERRIDES = tuple(kwargs.get("dest", flags[0][2:]) for flags, kwargs in ARGUMENTS if flags[0] != "--config")


def config_from_args(args: argparse.Namespace):
    from rge_demo.training.config import TrainConfig

    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}
    if args.config:
        cfg = TrainConfig.from_file(args.config, **overrides)
    else:
        cfg = TrainConfig.from_dict(overrides, source="command line")
    given = [f"--{k.replace('_', '-')}" for k in EG_RL_ONLY if k in overrides]
    if given and cfg.stage != "eg-rl":  # the run would ignore them without a word
        raise UsageError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for stage eg-rl; "
                         f"this run's stage is {cfg.stage}")
    return cfg


@command("train", HELP, ARGUMENTS)
def cmd_train(args: argparse.Namespace) -> int:
    from rge_demo.training.trainer import train  # heavy imports only when training

    logging.getLogger("rge_demo").setLevel(logging.INFO)  # a training log should say what happened
    cfg = config_from_args(args)  # ConfigError: a user error
    stop = {"requested": False}

    def request_stop(signum, frame):
        log.warning("signal %d: stopping after this step with a checkpoint", signum)
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with Progress(f"train {cfg.stage}", unit="step") as progress:
        def on_step(record: dict) -> None:
            postfix = {"loss": f"{record['loss']:.3f}", "phase": record["phase"]} if "loss" in record else {}
            progress(record["step"], record["total_steps"], **postfix)  # the step-0 probe record has no loss

        result = train(cfg, on_step=on_step, should_stop=lambda: stop["requested"])
    log.info("%s after %d steps; model: %s", result.status, result.steps, result.model_dir)
    return EXIT_OK if result.status == "finished" else EXIT_STOPPED
