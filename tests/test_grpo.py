"""GRPO loss and Embed-RL reward (rge_demo.training.grpo) against small examples worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rge_demo.training import grpo

LN2 = math.log(2)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.detach().float(), torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # group 0: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025
    # group 1: every reward equal -> std 0 -> advantage 0 / eps = 0
    adv = grpo.group_advantages(rewards, eps=1e-8)
    close(adv, [[0.866025, -0.866025, -0.866025, 0.866025], [0.0, 0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="group >= 2"):
        grpo.group_advantages(torch.ones(3, 1))


def _example():
    """Two rationales of 2 and 3 generated tokens (T = 3, the first one padded).

    ratios new/old:  seq 0 (A = +1):   1.5, 0.9, (pad)
                     seq 1 (A = -0.5): 1.1, 0.5, 1.3
    ref - new:       seq 0: 0, ln 2, (pad);   seq 1: ln 0.5, 0, 0
    """
    old = torch.full((2, 3), math.log(0.5))
    ratios = torch.tensor([[1.5, 0.9, 2.0], [1.1, 0.5, 1.3]])
    new = (old + torch.log(ratios)).requires_grad_(True)
    d = torch.tensor([[0.0, LN2, 5.0], [-LN2, 0.0, 0.0]])
    ref = new.detach() + d
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -0.5])
    return new, old, ref, adv, mask


def test_grpo_loss_token_level_by_hand():
    new, old, ref, adv, mask = _example()
    out = grpo.grpo_loss(new, old, ref, adv, mask, clip_eps=0.2, beta=0.04)
    # clip to [0.8, 1.2]; pg = -min(r A, clip(r) A)
    #   seq 0, A=+1:   min(1.5, 1.2) = 1.2 -> -1.2 (clipped);  min(0.9, 0.9) = 0.9 -> -0.9
    #   seq 1, A=-0.5: min(-0.55, -0.55) -> 0.55;  min(-0.25, -0.4) = -0.4 -> 0.4 (clipped);
    #                  min(-0.65, -0.6) = -0.65 -> 0.65 (not clipped: the min is the unclipped term)
    #   token mean over the 5 tokens: (-1.2 - 0.9 + 0.55 + 0.4 + 0.65) / 5 = -0.1
    assert out["pg_loss"].item() == pytest.approx(-0.1, abs=1e-6)
    # k3 = exp(d) - d - 1: d=0 -> 0; d=ln2 -> 2 - ln2 - 1 = 0.306853; d=ln0.5 -> 0.5 + ln2 - 1 = 0.193147
    #   mean over 5 tokens: (0.306853 + 0.193147) / 5 = 0.1
    assert out["kl"].item() == pytest.approx(0.1, abs=1e-6)
    # loss = -0.1 + 0.04 * 0.1
    assert out["loss"].item() == pytest.approx(-0.096, abs=1e-6)
    # clipping removes the gradient of seq 0 token 0 (r > 1.2, A > 0) and seq 1 token 1 (r < 0.8, A < 0): 2 / 5
    assert out["clip_frac"].item() == pytest.approx(0.4, abs=1e-6)
    out["loss"].backward()
    # d/dlogp_new: pg -> -r A / 5 where not clipped; k3 -> beta * (1 - exp(d)) / 5
    #   seq 0: t0 clipped, d=0 -> 0;  t1: -0.9/5 + 0.04 * (1 - 2)/5 = -0.18 - 0.008 = -0.188;  pad -> 0
    #   seq 1: t0: 0.55/5 + 0.04 * (1 - 0.5)/5 = 0.11 + 0.004 = 0.114;  t1 clipped, d=0 -> 0;  t2: 0.65/5 = 0.13
    close(new.grad, [[0.0, -0.188, 0.0], [0.114, 0.0, 0.13]])
    assert not out["pg_loss"].requires_grad and not out["kl"].requires_grad


def test_grpo_loss_sequence_level_by_hand():
    new, old, ref, adv, mask = _example()
    out = grpo.grpo_loss(new, old, ref, adv, mask, clip_eps=0.2, beta=0.04, level="sequence")
    # per rationale, then over rationales: pg ((-1.2 - 0.9) / 2 + (0.55 + 0.4 + 0.65) / 3) / 2 = (-1.05 + 0.533333) / 2
    assert out["pg_loss"].item() == pytest.approx(-0.258333, abs=1e-6)
    # kl ((0 + 0.306853) / 2 + (0.193147 + 0 + 0) / 3) / 2 = (0.153426 + 0.064382) / 2
    assert out["kl"].item() == pytest.approx(0.108904, abs=1e-6)
    assert out["loss"].item() == pytest.approx(-0.258333 + 0.04 * 0.108904, abs=1e-6)


def test_equal_old_and_new_policy_gives_minus_the_mean_advantage():
    # ratio 1 everywhere, ref == new: pg = -A per token, no clipping, KL 0
    logp = torch.zeros(2, 2)
    out = grpo.grpo_loss(logp, logp, logp, torch.tensor([0.3, -0.1]), torch.ones(2, 2))
    assert out["pg_loss"].item() == pytest.approx(-(0.3 - 0.1) / 2)
    assert out["kl"].item() == 0.0 and out["clip_frac"].item() == 0.0


def test_grpo_loss_rejects_mismatched_shapes():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        grpo.grpo_loss(x, x, x, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="shape"):
        grpo.grpo_loss(x, x, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="level"):
        grpo.grpo_loss(x, x, x, torch.zeros(2), torch.ones(2, 3), level="word")


def test_token_logps_by_hand():
    # V = 2, logits (0, ln 3): probabilities (1/4, 3/4)
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    out = grpo.token_logps(logits, torch.tensor([[1, 0]]))
    close(out, [[math.log(0.75), math.log(0.25)]])


def test_retrieval_reward_by_hand():
    # candidates c0 = (1, 0), c1 = (0, 1), c2 = (0.6, 0.8); queries (2, 0) -> target 0 and (0, 1) -> target 2
    # query 0 cosines (1, 0, 0.6) / 0.5 = (2, 0, 1.2): p0 = e^2 / (e^2 + 1 + e^1.2) = 7.389056 / 11.709173 = 0.631049
    # query 1 cosines (0, 1, 0.8) / 0.5 = (0, 2, 1.6): p2 = e^1.6 / (1 + e^2 + e^1.6) = 4.953032 / 13.342088 = 0.371234
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    r = grpo.retrieval_reward(q, c, torch.tensor([0, 2]), temperature=0.5)
    assert r.tolist() == pytest.approx([0.631049, 0.371234], abs=1e-6)


def test_format_reward():
    labels = ["one", "two", "red circle"]
    rationales = ["top red circle. circles 1. answer one", "answer red circle", "answer five",
                  "answer one. and more text", "no conclusion", ""]
    assert grpo.format_reward(rationales, labels).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_embed_rl_reward_adds_the_weighted_format_term():
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    out = grpo.embed_rl_reward(q, c, torch.tensor([0, 2]), ["x. answer one", "answer nine"], ["one", "two", "three"],
                               temperature=0.5, format_weight=0.5)
    # 0.631049 + 0.5 * 1 and 0.371234 + 0.5 * 0
    assert out["reward"].tolist() == pytest.approx([1.131049, 0.371234], abs=1e-6)
    assert out["format"].tolist() == [1.0, 0.0]
    # advantages of one group of these rewards: mean 0.751142, std |1.131049 - 0.371234| / sqrt(2) = 0.537276
    adv = grpo.group_advantages(out["reward"][None], eps=0.0)
    close(adv, [[1 / math.sqrt(2), -1 / math.sqrt(2)]], atol=1e-5)
