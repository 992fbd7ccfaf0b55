"""Fidelity-aware token weights (decision-level and disagreement-weighted KD) against float64 references."""

import pytest
import torch
import torch.nn.functional as F

from kdlab.losses import TokenWeights, chunked_distill_loss, disagreement_weight, naive_distill_loss

pytestmark = pytest.mark.usefixtures("float64_by_default")  # tests/conftest.py


def reference_objective(zs, zt, targets, loss, tau, w, gamma=0.0, answer=None, a=1.0, hard=False):
    """Sum over tokens, written out from the TokenWeights docstring with explicit probabilities (float64)."""
    ps, pt = torch.softmax(zs / tau, -1), torch.softmax(zt / tau, -1)
    if loss == "fkl":
        divergence = (pt * (pt.log() - ps.log())).sum(-1)
    else:  # rkl
        divergence = (ps * (ps.log() - pt.log())).sum(-1)
    pt1 = torch.softmax(zt, -1)  # the teacher at temperature 1 for the disagreement weight
    total = zs.new_zeros(())
    for n in range(zs.shape[0]):
        ce = -torch.log_softmax(zs[n], -1)[targets[n]]
        on_answer = answer is not None and bool(answer[n])
        if on_answer and hard:
            total = total + a * ce
            continue
        g = 1.0
        if gamma:
            g = 1.0 + gamma * float(int(zs[n].argmax()) != int(zt[n].argmax())) * float(pt1[n].max())
        if on_answer:
            g = g * a
        total = total + (1 - w) * ce + w * tau**2 * g * divergence[n]
    return total


def _inputs(n=37, hidden=16, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, hidden, generator=g)
    ws = torch.randn(vocab, hidden, generator=g) * 0.5
    ht = torch.randn(n, hidden, generator=g)
    wt = torch.randn(vocab + 3, hidden, generator=g) * 0.8  # padded teacher head, sliced to the shared vocab
    targets = torch.randint(0, vocab, (n,), generator=g)
    answer = torch.zeros(n, dtype=torch.bool)
    answer[-6:-1] = True
    return hs, ws, ht, wt, targets, answer


CASES = [
    {"loss": "fkl", "tau": 1.0, "w": 1.0, "gamma": 2.0},
    {"loss": "fkl", "tau": 2.0, "w": 0.5, "gamma": 0.7},
    {"loss": "rkl", "tau": 1.0, "w": 1.0, "a": 5.0},
    {"loss": "fkl", "tau": 2.0, "w": 0.7, "a": 3.0, "gamma": 1.5},
    {"loss": "fkl", "tau": 1.0, "w": 1.0, "a": 4.0, "hard": True},
    {"loss": "rkl", "tau": 2.0, "w": 0.5, "a": 2.0, "hard": True, "gamma": 1.0},
]


@pytest.mark.parametrize("case", CASES)
def test_chunked_weighted_loss_equals_the_float64_reference(case):
    hs, ws, ht, wt, targets, answer = _inputs()
    gamma, a, hard = case.get("gamma", 0.0), case.get("a", 1.0), case.get("hard", False)
    weights = TokenWeights(gamma, answer if (a != 1 or hard) else None, a, hard)
    hs1, ws1 = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    got = chunked_distill_loss(
        hs1,
        ws1,
        ht,
        wt,
        targets,
        loss=case["loss"],
        temperature=case["tau"],
        kd_weight=case["w"],
        vocab_size=50,
        chunk_size=8,
        weights=weights,
    )
    got.backward()
    hs2, ws2 = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    ref = reference_objective(
        hs2 @ ws2.T, ht @ wt[:50].T, targets, case["loss"], case["tau"], case["w"], gamma, weights.answer, a, hard
    )
    ref.backward()
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hs1.grad, hs2.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ws1.grad, ws2.grad, rtol=1e-9, atol=1e-10)
    # the naive full-logit form agrees too
    naive = naive_distill_loss(
        hs @ ws.T,
        ht @ wt[:50].T,
        targets,
        loss=case["loss"],
        temperature=case["tau"],
        kd_weight=case["w"],
        weights=weights,
    )
    torch.testing.assert_close(naive, ref.detach(), rtol=1e-10, atol=1e-10)


def test_neutral_weights_are_plain_kd_and_real_weights_are_not():
    hs, ws, ht, wt, targets, answer = _inputs(seed=1)
    plain = chunked_distill_loss(hs, ws, ht, wt, targets, loss="fkl", temperature=2.0, vocab_size=50, chunk_size=8)
    for neutral in (TokenWeights(0.0), TokenWeights(0.0, answer, 1.0, False)):  # gamma 0 == plain KL; a = 1 == plain
        assert torch.equal(
            chunked_distill_loss(
                hs, ws, ht, wt, targets, loss="fkl", temperature=2.0, vocab_size=50, chunk_size=8, weights=neutral
            ),
            plain,
        )
    for weighted in (TokenWeights(1.0), TokenWeights(0.0, answer, 2.0, False)):
        other = chunked_distill_loss(
            hs, ws, ht, wt, targets, loss="fkl", temperature=2.0, vocab_size=50, chunk_size=8, weights=weighted
        )
        assert other > plain * 1.01


def test_disagreement_weight_by_hand():
    zs = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    top1, top1_p = torch.tensor([0, 0]), torch.tensor([0.9, 0.6])
    # row 0 agrees (argmax 0 == 0): weight 1; row 1 disagrees: 1 + 2 * 0.6
    torch.testing.assert_close(disagreement_weight(zs, top1, top1_p, 2.0), torch.tensor([1.0, 2.2]))
    assert not disagreement_weight(zs.requires_grad_(True), top1, top1_p, 2.0).requires_grad


def test_hard_answer_tokens_are_answer_weight_times_ce():
    hs, ws, ht, wt, targets, _ = _inputs(n=5, seed=2)
    answer = torch.ones(5, dtype=torch.bool)
    got = chunked_distill_loss(
        hs, ws, ht, wt, targets, loss="fkl", vocab_size=50, weights=TokenWeights(0.0, answer, 3.0, True)
    )
    torch.testing.assert_close(got, 3.0 * F.cross_entropy(hs @ ws.T, targets, reduction="sum"))
