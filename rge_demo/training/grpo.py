"""GRPO for a Reasoner trained by an Embedder's reward (Embed-RL's EG-RL), as pure tensor functions.

Group Relative Policy Optimisation (DeepSeekMath, arXiv 2402.03300; TRL's ``GRPOTrainer``): for
each query, ``G`` rationales are sampled from the old policy and scored; each one's advantage is
its reward relative to its group,

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        (std with Bessel's correction, as TRL)

and every generated token ``t`` of rationale ``i`` gets the clipped surrogate plus a KL penalty to
a frozen reference policy (the Reasoner before RL):

    ratio_it = exp(logp_new_it - logp_old_it)
    pg_it    = -min(ratio_it * A_i, clip(ratio_it, 1 - eps_clip, 1 + eps_clip) * A_i)
    kl_it    = exp(logp_ref_it - logp_new_it) - (logp_ref_it - logp_new_it) - 1     (k3, >= 0)
    loss     = masked_mean(pg_it + beta * kl_it)

``masked_mean`` is over all generated tokens of the batch (``level="token"``, as DAPO and TRL's
default) or per rationale then over rationales (``level="sequence"``, the paper's 1/|o_i|).
``clip_frac`` is the share of tokens whose gradient the clip removes (ratio above 1 + eps with
A > 0, or below 1 - eps with A < 0).

The Embed-RL reward comes from the frozen Embedder: the query embedded with its sampled T-CoT is
scored against the batch's candidates,

    retrieval_i = softmax_j(cos(q_i, c_j) / temperature)[target_i]

plus a format reward (1 when the rationale ends in ``answer X`` and X is one of the candidates'
labels, else 0), weighted by ``format_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rge_demo.data import world

LEVELS = ("token", "sequence")


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages: rewards (B, G) -> (B, G); a group of equal rewards gets 0."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (queries, group >= 2), got shape {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, keepdim=True)  # (B, 1), unbiased
    return (rewards - mean) / (std + eps)


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chosen token: logits (N, T, V) predicting ids (N, T) -> (N, T) float32."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, ids.unsqueeze(-1)).squeeze(-1)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    if level == "token":
        return (x * mask).sum() / mask.sum().clamp(min=1)
    per_seq = (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (N,)
    return per_seq[mask.sum(dim=1) > 0].mean()


def grpo_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.04, level: str = "token") -> dict[str, torch.Tensor]:
    """The GRPO objective (module docstring) and its parts.

    logp_new / logp_old / logp_ref (N, T): per-token log-probabilities of the sampled rationales
    under the policy being trained (with grad), the policy that sampled them and the reference;
    advantages (N,) one per rationale (flatten :func:`group_advantages`); mask (N, T) 1 on
    generated tokens. Returns ``{"loss", "pg_loss", "kl", "clip_frac"}`` (scalars; only ``loss``
    carries a gradient through ``logp_new``).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if not (logp_new.shape == logp_old.shape == logp_ref.shape == mask.shape) or logp_new.ndim != 2:
        raise ValueError(f"log-probs and mask must share one (N, T) shape, got {tuple(logp_new.shape)}, "
                         f"{tuple(logp_old.shape)}, {tuple(logp_ref.shape)}, {tuple(mask.shape)}")
    if advantages.shape != logp_new.shape[:1]:
        raise ValueError(f"advantages must be (N,) = ({logp_new.shape[0]},), got {tuple(advantages.shape)}")
    mask = mask.to(logp_new.dtype)
    adv = advantages.to(logp_new.dtype)[:, None]  # (N, 1)
    ratio = torch.exp(logp_new - logp_old.detach())  # (N, T)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    pg = -torch.minimum(ratio * adv, clipped * adv)  # (N, T)
    d = logp_ref.detach() - logp_new
    kl = torch.exp(d) - d - 1  # (N, T), k3 estimator of KL(new || ref)
    pg_loss = _masked_mean(pg, mask, level)
    kl_mean = _masked_mean(kl, mask, level)
    active = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
    return {"loss": pg_loss + beta * kl_mean, "pg_loss": pg_loss.detach(), "kl": kl_mean.detach(),
            "clip_frac": _masked_mean(active.to(mask.dtype), mask, "token").detach()}


# --------------------------------------------------------------------------------------- rewards
def retrieval_reward(queries: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor,
                     temperature: float = 0.05) -> torch.Tensor:
    """Softmax probability of each query's right candidate: queries (B, D), candidates (N, D), targets (B,) -> (B,).

    Cosines (inputs are normalised here) divided by ``temperature``; the candidates are the
    batch's distinct targets, as in the contrastive loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T / temperature  # (B, N)
    return torch.softmax(logits, dim=-1).gather(1, targets.long()[:, None]).squeeze(1)


def format_reward(rationales: Sequence[str], labels: Sequence[str]) -> torch.Tensor:
    """1.0 for a rationale that ends in ``answer X`` with X one of ``labels``, else 0.0: (B,)."""
    known = set(labels)
    return torch.tensor([float(world.answer_of(r or "") in known) for r in rationales])


def embed_rl_reward(queries: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor,
                    rationales: Sequence[str], labels: Sequence[str], temperature: float = 0.05,
                    format_weight: float = 0.5) -> dict[str, torch.Tensor]:
    """``{"reward", "retrieval", "format"}`` (B,) each: reward = retrieval + format_weight * format."""
    if len(rationales) != queries.shape[0]:
        raise ValueError(f"{queries.shape[0]} query embeddings but {len(rationales)} rationales")
    retrieval = retrieval_reward(queries, candidates, targets, temperature)
    fmt = format_reward(rationales, labels).to(retrieval.device)
    return {"reward": retrieval + format_weight * fmt, "retrieval": retrieval, "format": fmt}
