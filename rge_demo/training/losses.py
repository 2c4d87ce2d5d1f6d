"""RGE losses as pure tensor functions.

InfoNCE (paper Eq. 1): with unit vectors ``q`` (B, D) and candidates ``t`` (N, D),

    L = -1/B * sum_i log( exp(cos(q_i, t_{y_i}) / tau) / sum_j exp(cos(q_i, t_j) / tau) )

``tau`` is a temperature (0.03 in the paper), i.e. a logit scale of 1/tau ~ 33. Candidates are the
DISTINCT targets of the batch, so two queries with the same answer are not each other's negatives;
``y`` maps each query to its target's column.

The LM loss is token-level cross-entropy over every supervised token, pooled over the query side
(rationale tokens + ``<emb>``) and the target side (the single ``<emb>``; not in the LM-only cold
start, where the targets are not embedded), and over all processes.
This is our reading of the paper's Eq. 8: the sides' summed token losses (:func:`token_ce`) are
divided by their total token count, so each supervised token weighs the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, temperature: float = 0.03,
             column_mask: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of queries ``q`` (B, D) against candidates ``t`` (N, D); ``labels`` (B,) index ``t``.

    ``column_mask`` (N,) bool, optional: False columns (padding, duplicates) are no negatives.
    Inputs need not be normalised; cosine similarity is used.
    """
    logits = F.normalize(q, dim=-1) @ F.normalize(t, dim=-1).T / temperature  # (B, N)
    if column_mask is not None:
        logits = logits.masked_fill(~column_mask[None, :], float("-inf"))
    return F.cross_entropy(logits, labels)


def token_ce(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and the number of supervised tokens.

    ``hidden`` (B, L, D) predicts position ``l + 1`` from position ``l`` through ``head``; ``labels``
    (B, L) hold -100 where nothing is supervised. The head runs on the supervised positions only
    (a rationale is a third of a query's positions): the same sum as over all of them, less work.
    """
    target = labels[:, 1:]
    supervised = target != -100
    logits = head(hidden[:, :-1][supervised])  # (N, V)
    return F.cross_entropy(logits.float(), target[supervised], reduction="sum"), supervised.sum()


def rge_loss(lm: torch.Tensor, contrastive: torch.Tensor, a_lm: float = 0.1, a_con: float = 1.0) -> dict[str, torch.Tensor]:
    """Joint objective ``a_lm * LM + a_con * InfoNCE`` (paper ratio 1 : 10); returns every part."""
    return {"loss": a_lm * lm + a_con * contrastive, "lm_loss": lm, "contrastive_loss": contrastive}
