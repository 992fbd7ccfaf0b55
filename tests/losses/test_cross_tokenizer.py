"""The cross-tokenizer objective's edge cases and its chunked gradient path (parity with TRL:
tests/test_peer_parity_cross_tokenizer.py)."""

import math

import torch

from kdlab.losses.chunked import chunked_token_loss
from kdlab.losses.cross_tokenizer import CrossSpec, SharedVocab, Side, cross_tokenizer_objective, span_loss


def side(n: int, vocab: int, spans: int, seed: int, grad: bool = False) -> Side:
    """A side whose first ``2 * spans`` rows form ``spans`` two-token spans; the other rows are in no span."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, 8, generator=gen).requires_grad_(grad)
    span_of = torch.full((n,), -1)
    span_of[: 2 * spans] = torch.arange(spans).repeat_interleave(2)
    return Side(
        hidden,
        torch.randn(vocab, 8, generator=gen),
        torch.randint(vocab, (n,), generator=gen),
        torch.arange(spans) * 2 + 1,
        span_of,
    )


def test_a_batch_without_spans_gives_zero_kd_and_finite_gradients():
    """Every response cut before the first common boundary: no span; the KD term is 0, CE still trains."""
    student, teacher = side(5, 11, 0, 0, grad=True), side(4, 13, 0, 1)
    for kd_weight in (1.0, 0.5):
        value = cross_tokenizer_objective(CrossSpec("uld", kd_weight=kd_weight), student, teacher, torch.zeros(0), None)
        (grad,) = torch.autograd.grad(value, student.hidden)
        assert torch.isfinite(grad).all()
        assert (float(value.detach()) == 0.0) == (kd_weight == 1.0)


def test_gold_without_unshared_entries_has_no_uld_part():
    """Every student entry shared (the teacher has more): the ULD part is 0, as in TRL's hybrid."""
    q_s, q_t = torch.rand(3, 4), torch.rand(3, 6)
    shared = SharedVocab.build([0, 1, 2, 3], [1, 2, 3, 4], 4, 6)
    spec = CrossSpec("gold", beta=0.5, shared_weight=0.3)
    only_shared = span_loss(CrossSpec("gold", beta=0.5, shared_weight=1.0), q_s, q_t, shared)
    torch.testing.assert_close(span_loss(spec, q_s, q_t, shared), 0.3 * only_shared)


def test_span_loss_values_from_the_formula_in_float64():
    """uld: sum |sorted q_S - sorted q_T| (zero-padded); gold: a * gjsd on shared + (1 - a) * uld on the rest."""
    q_s = torch.tensor([[0.5, 0.3, 0.1]], dtype=torch.float64)
    q_t = torch.tensor([[0.1, 0.6, 0.2, 0.05]], dtype=torch.float64)
    uld = (0.6 - 0.5) + (0.3 - 0.2) + (0.1 - 0.1) + 0.05
    assert abs(float(span_loss(CrossSpec("uld"), q_s, q_t, None)) - uld) < 1e-12
    shared = SharedVocab.build([0], [1], 3, 4)  # student 0 <-> teacher 1
    p, q = 0.5, 0.6
    m = 0.5 * p + 0.5 * q
    gjsd = 0.5 * q * math.log(q / m) + 0.5 * p * math.log(p / m)
    rest = abs(0.3 - 0.2) + abs(0.1 - 0.1) + 0.05  # student [0.3, 0.1] vs teacher [0.2, 0.1, 0.05]
    expected = 0.25 * float(gjsd) + 0.75 * rest
    got = span_loss(CrossSpec("gold", beta=0.5, shared_weight=0.25), q_s, q_t, shared)
    assert abs(float(got) - expected) < 1e-12


def test_chunked_token_loss_with_per_row_inputs_equals_autograd():
    """The per-row input path of chunked_token_loss (span prefixes): values and gradients of hidden, weight and the
    row inputs equal plain autograd on full logits, for chunks of 2 and of everything."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    weight = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    rows = torch.randn(7, generator=gen, dtype=torch.float64)

    def token_loss(logits, start, end, pre):
        return (logits.log_softmax(-1) + pre[:, None]).exp().pow(2).sum(-1)

    def inputs():
        return [x.clone().requires_grad_(True) for x in (hidden, weight, rows)]

    h, w, r = inputs()
    reference = token_loss(h @ w.T, 0, 7, r).sum()
    expected = torch.autograd.grad(reference, (h, w, r))
    for chunk in (2, 100):
        h, w, r = inputs()
        value = chunked_token_loss(h, w, token_loss, chunk, rows=r)
        assert abs(float(value) - float(reference)) < 1e-12
        for got, want in zip(torch.autograd.grad(value, (h, w, r)), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
