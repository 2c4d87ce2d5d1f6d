"""Run under ``torch.distributed.run --nproc_per_node N`` (or plainly for N = 1): every stage's loss
and summed gradient on one fixed global batch, printed as JSON by rank 0."""

import json
import sys

import torch
from accelerate import Accelerator

from rge_demo.models.loading import load_checkpoint
from rge_demo.training.config import TrainConfig
from rge_demo.training.data import world_pairs
from rge_demo.training.trainer import StepContext, compute_loss

torch.set_num_threads(1)
acc = Accelerator(cpu=True)
model, processor = load_checkpoint(sys.argv[1], device="cpu", dtype="float32")
model.train()
cfg = TrainConfig(stage="rge", init=sys.argv[1], batch_size=8, max_new_tokens=6, direct_weight=0.5)
pairs = [p for ps in world_pairs(["count", "ground"], "train", 4, seed=3).values() for p in ps]  # global batch 8
per = len(pairs) // acc.num_processes
local = pairs[acc.process_index * per:(acc.process_index + 1) * per]
ctx = StepContext(model, processor, cfg, acc)
out = {}
for phase in ("cold-start", "joint", "baseline", "leakage"):
    model.zero_grad()
    parts, _ = compute_loss(ctx, local, phase)
    parts["objective"].backward()
    grads = {name: acc.reduce(p.grad.clone() if p.grad is not None else torch.zeros_like(p), reduction="sum")
             for name, p in (("lm_head", model.lm_head.weight), ("embed", model.model.language_model.embed_tokens.weight),
                             ("vision", model.model.visual.patch_embed.proj.weight))}
    out[phase] = {"loss": parts["loss"].item(), "lm": parts["lm_loss"].item(),
                  "contrastive": parts["contrastive_loss"].item(),
                  **{f"{name}_grad": g.norm().item() for name, g in grads.items()}}
if acc.is_main_process:
    print("RESULT " + json.dumps(out))
