"""Embedder-Guided RL (Embed-RL's EG-RL stage): the Reasoner trained by a frozen Embedder's reward.

One step, for the B queries of this process's batch:

1. the Reasoner (the model being trained) samples ``group_size`` T-CoTs per query at
   ``rl_temperature`` (one batched ``generate``, seeded by the step), each ending at ``<emb>``;
2. the frozen Embedder embeds every query with each of its T-CoTs (at ``<emb>``) and the batch's
   distinct targets (direct); the reward is :func:`~rge_demo.training.grpo.embed_rl_reward`: the
   softmax probability of the right target among them, plus ``format_weight`` when the T-CoT ends
   in ``answer X`` with X one of the batch's answers;
3. GRPO (:func:`~rge_demo.training.grpo.grpo_loss`): group-normalised advantages, the clipped
   surrogate on every generated token (``<emb>`` included: when to stop is part of the action) and
   a k3 KL penalty to the reference, the Reasoner before RL. One update per sampled batch, so the
   sampling policy is the policy being trained (TRL's default ``num_iterations=1``).

The step runs inside :func:`rge_demo.training.trainer.compute_loss` (phase ``"eg-rl"``), so it uses
the same trainer entry point, checkpoints, metrics, background worker and Train tab.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from rge_demo.data import world

from .grpo import embed_rl_reward, group_advantages, grpo_loss, token_logps


def suffix_logps(model, batch: dict, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of each row's last ``lengths[i]`` tokens (its suffix, right-aligned
    by :func:`~rge_demo.embedding.encoder.collate`): (N, T) each, and the (N, T) mask of real tokens."""
    t = max(lengths)
    hidden = model.model(**batch, use_cache=False).last_hidden_state  # (N, L, D)
    logits = model.lm_head(hidden[:, -t - 1:-1])  # (N, T, V): position j predicts token j + 1
    logps = token_logps(logits, batch["input_ids"][:, -t:])  # (N, T)
    pos = torch.arange(t, device=logps.device)[None, :]
    mask = (pos >= t - torch.tensor(lengths, device=logps.device)[:, None]).to(logps.dtype)
    return logps, mask


@torch.no_grad()
def sample_tcots(ctx, rows, seed: int) -> list[list[int]]:
    """One sampled T-CoT per row (token ids, ``<emb>`` excluded; a T-CoT that hits the budget ends there)."""
    cfg = ctx.cfg
    config = GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.rl_temperature,
                              top_k=0, top_p=1.0, eos_token_id=ctx.emb_id, pad_token_id=ctx.pad_id,
                              suppress_tokens=ctx.gen_config.suppress_tokens, use_cache=True)
    was_training = ctx.model.training
    ctx.model.eval()
    batch = ctx.batch(rows)
    torch.manual_seed(seed)
    out = ctx.model.generate(**batch, generation_config=config)
    ctx.model.train(was_training)
    ids = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        ids.append(row[: row.index(ctx.emb_id)] if ctx.emb_id in row else [t for t in row if t != ctx.pad_id])
    return ids


def eg_rl_loss(ctx, pairs, step_seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """The EG-RL step's loss (module docstring) and its statistics: mean reward, its retrieval and
    format parts, KL to the reference, clip share, T-CoT length and two sampled T-CoTs."""
    cfg = ctx.cfg
    g = cfg.group_size
    q_rows = ctx.rows([p.query for p in pairs], direct=False)
    rows = [r for r in q_rows for _ in range(g)]  # (B * G), query-major
    ids = sample_tcots(ctx, rows, step_seed)
    suffixes = [r + [ctx.emb_id] for r in ids]
    batch = ctx.batch(rows, suffixes)
    lengths = [len(s) for s in suffixes]
    logp_new, mask = suffix_logps(ctx.model, batch, lengths)
    with torch.no_grad():
        logp_ref, _ = suffix_logps(ctx.reference, batch, lengths)
        emb = ctx.embedder.model(**batch, use_cache=False).last_hidden_state[:, -1]  # (B*G, D)
        keys, first = [p.target_key for p in pairs], {}
        for p in pairs:
            first.setdefault(p.target_key, len(first))
        distinct = [next(p for p in pairs if p.target_key == k) for k in first]
        t_batch = ctx.batch(ctx.target_rows(distinct))
        cands = ctx.embedder.model(**t_batch, use_cache=False).last_hidden_state[:, -1]  # (N, D)
        targets = torch.tensor([first[k] for k in keys for _ in range(g)], device=emb.device)
        texts = [ctx.tok.decode(r, skip_special_tokens=True) for r in ids]
        answers = sorted({world.answer_of(p.rationale) for p in pairs} - {None, ""})
        reward = embed_rl_reward(emb, cands, targets, texts, answers, cfg.reward_temperature, cfg.format_weight)
    adv = group_advantages(reward["reward"].view(len(pairs), g)).flatten()
    parts = grpo_loss(logp_new, logp_new.detach(), logp_ref, adv, mask, cfg.clip_eps, cfg.kl_beta)
    zero = torch.zeros((), device=logp_new.device)
    out = {"objective": parts["loss"], "loss": parts["loss"].detach(), "lm_loss": zero, "contrastive_loss": zero,
           "direct_loss": zero, "swap_loss": zero}
    stats = {"reward": reward["reward"].mean().item(), "retrieval_reward": reward["retrieval"].mean().item(),
             "format_reward": reward["format"].mean().item(), "kl": parts["kl"].item(),
             "clip_frac": parts["clip_frac"].item(), "pg_loss": parts["pg_loss"].item(),
             "rationale_tokens": sum(map(len, ids)) / len(ids), "samples": texts[:2]}
    return out, stats


__all__ = ["eg_rl_loss", "sample_tcots", "suffix_logps"]
