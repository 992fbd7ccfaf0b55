"""Distillation across tokenizers: ULD and the GOLD hybrid, on spans of identical text, a chunk of spans at a time.

The student and the teacher tokenise the same response differently; :mod:`kdlab.data.token_alignment` cuts it into
spans of identical bytes. For a span holding tokens ``y_1 .. y_m`` of one model (m >= 1), that model's *span
distribution* is the chain rule up to the span's last token (TRL GOLD's ``"bayesian"`` merge)::

    q(v) = p(v | prefix, y_1 .. y_{m-1}) * prod_{j < m} max(p(y_j | prefix, y_<j), 1e-8)          [V]

with every ``p`` at temperature tau (``softmax(z / tau)``): the probability of the span's text up to its last token,
spread over the choices for that last token (unnormalised; its mass is the probability of the first m - 1 tokens).
The two span distributions ``q_S`` [V_S] and ``q_T`` [V_T] of a span are then compared by (:data:`CROSS_TOKENIZER_LOSSES`):

- ``uld`` (Boizard et al. 2024): ``sum_i |sort(q_S)_i - sort(q_T)_i|``, both sorted in decreasing order and the
  shorter one padded with zeros: the L1 distance of the sorted vectors (a closed-form Wasserstein-1).
- ``gold`` (TRL's GOLD hybrid): on the ``K`` vocabulary pairs both tokenizers share
  (:func:`kdlab.data.token_alignment.shared_vocabulary`) the generalized JSD with ``kd.beta``
  (:mod:`kdlab.losses.divergences`, on ``log max(q, 1e-8)`` of the shared entries), on the rest ULD::

      gold = a * gjsd_beta(q_S[shared_S], q_T[shared_T]) + (1 - a) * uld(q_S[rest_S], q_T[rest_T])

  with ``a = kd.shared_weight``, or ``K / V_T`` when it is -1 (TRL's adaptive default; V_T is the teacher's
  vocabulary cut to its tokenizer, TRL's is its output layer's width). When either side has no entry outside the
  shared ones, the ULD part is 0 (as in TRL).

The training objective is kdlab's: ``(1 - w) * sum_n CE_n + w * tau^2 * sum_g n_g * loss_g`` over a micro-batch,
``n_g`` the student tokens of span g, divided by the batch's response tokens like every kdlab objective: each
student token carries the loss of its span, so with one tokenizer (every span one token; all of it shared, a = 1)
``gold`` is exactly kdlab's per-token ``gjsd``. TRL instead averages spans equally within an example and then the
examples; ``tests/test_peer_parity_cross_tokenizer.py`` compares the span losses under TRL's averaging.

Memory: per-token log-probabilities are computed a chunk of ``chunk_size`` positions at a time under activation
checkpointing, the span distributions a chunk of spans at a time with their gradients taken in the forward pass
(:func:`kdlab.losses.chunked.chunked_token_loss`): no ``[N, V]`` tensor of either model is kept for the backward
pass, and at most one chunk's ``[C, V_S]`` and ``[C, V_T]`` exist at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdlab.losses.divergences import divergence_from_log_probs, upcast

if TYPE_CHECKING:
    import torch

#: The cross-tokenizer losses (``kd.loss``): name -> help text.
CROSS_TOKENIZER_LOSSES = {
    "uld": "cross-tokenizer ULD: L1 between the sorted span distributions (Boizard et al. 2024)",
    "gold": "cross-tokenizer GOLD hybrid: gjsd (kd.beta) on the shared vocabulary, ULD on the rest, weighted by "
    "kd.shared_weight",
}

PROB_FLOOR = 1e-8  # TRL GOLD's floor on a scalar token probability and on log-probabilities of the matched part
LOG_FLOOR = math.log(PROB_FLOOR)


@dataclass(frozen=True)
class SharedVocab:
    """The vocabulary pairs of two tokenizers: ``student_ids`` [K] and ``teacher_ids`` [K] (long tensors) stand for
    the same token; ``student_rest`` and ``teacher_rest`` are the other ids of each output vocabulary."""

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    student_rest: torch.Tensor
    teacher_rest: torch.Tensor

    @classmethod
    def build(cls, student_ids: list[int], teacher_ids: list[int], student_vocab: int, teacher_vocab: int):
        import torch

        pairs = [
            (s, t) for s, t in zip(student_ids, teacher_ids, strict=True) if s < student_vocab and t < teacher_vocab
        ]
        s_ids = torch.tensor([s for s, _ in pairs], dtype=torch.long)
        t_ids = torch.tensor([t for _, t in pairs], dtype=torch.long)
        s_rest, t_rest = torch.ones(student_vocab, dtype=torch.bool), torch.ones(teacher_vocab, dtype=torch.bool)
        s_rest[s_ids], t_rest[t_ids] = False, False
        return cls(s_ids, t_ids, s_rest.nonzero().squeeze(1), t_rest.nonzero().squeeze(1))


@dataclass(frozen=True)
class CrossSpec:
    """What the cross-tokenizer objective computes: ``loss`` (uld | gold), temperature ``temperature``, ``kd_weight``
    w against CE, ``beta`` of the gold gjsd part, ``shared_weight`` a (-1: K / V_T), ``chunk_size``."""

    loss: str
    temperature: float = 1.0
    kd_weight: float = 1.0
    beta: float = 0.5
    shared_weight: float = -1.0
    chunk_size: int = 256


def sorted_l1(q_s: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
    """ULD per row: ``sum_i |sort(q_s)_i - sort(q_t)_i|``, decreasing order, zero-padded; [G, V_S] x [G, V_T] -> [G]."""
    import torch.nn.functional as F

    s = q_s.sort(dim=-1, descending=True).values
    t = q_t.sort(dim=-1, descending=True).values
    width = max(s.shape[-1], t.shape[-1])
    s, t = F.pad(s, (0, width - s.shape[-1])), F.pad(t, (0, width - t.shape[-1]))
    return (s - t).abs().sum(-1)


def span_loss(spec: CrossSpec, q_s: torch.Tensor, q_t: torch.Tensor, shared: SharedVocab | None) -> torch.Tensor:
    """The loss of each span from its two span distributions (module docstring): [G, V_S] x [G, V_T] -> [G]."""
    if spec.loss == "uld":
        return sorted_l1(q_s, q_t)
    if shared is None:
        raise ValueError("gold needs the shared vocabulary")
    device = q_s.device
    s_ids, t_ids = shared.student_ids.to(device), shared.teacher_ids.to(device)
    matched = divergence_from_log_probs(
        "gjsd", q_s[:, s_ids].clamp_min(PROB_FLOOR).log(), q_t[:, t_ids].clamp_min(PROB_FLOOR).log(), beta=spec.beta
    )
    s_rest, t_rest = shared.student_rest.to(device), shared.teacher_rest.to(device)
    rest = sorted_l1(q_s[:, s_rest], q_t[:, t_rest]) if len(s_rest) and len(t_rest) else matched * 0.0  # as TRL
    a = spec.shared_weight if spec.shared_weight >= 0 else len(t_ids) / q_t.shape[-1]
    return a * matched + (1 - a) * rest


@dataclass(frozen=True)
class Side:
    """One model's side of a batch of spans: ``hidden`` [N, H] final hidden states predicting the response tokens
    ``targets`` [N] (batch rows then positions), ``weight`` [V, H] its output layer cut to its vocabulary,
    ``last`` [G] the row of each span's last token and ``span_of`` [N] each row's span (-1: in no span)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    last: torch.Tensor
    span_of: torch.Tensor


def _checkpointed(fn, *inputs):
    """``fn(*inputs)`` under activation checkpointing when gradients are on (its intermediates, such as a chunk's
    logits, are recomputed in the backward pass instead of kept)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *inputs, use_reentrant=False) if torch.is_grad_enabled() else fn(*inputs)


def token_log_probs(side: Side, rows: torch.Tensor, temperature: float, chunk_size: int) -> torch.Tensor:
    """``log softmax(z_n / tau)[y_n]`` of the rows ``rows`` [M] (indices into ``side.hidden``), a chunk at a time
    (checkpointed: no [M, V] kept) -> [M]."""
    import torch
    import torch.nn.functional as F

    weight = side.weight

    def chunk(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = upcast(F.linear(hidden, weight)) / temperature
        return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)

    hidden, targets = side.hidden[rows], side.targets[rows]
    pieces = [
        _checkpointed(chunk, hidden[start : start + chunk_size], targets[start : start + chunk_size])
        for start in range(0, hidden.shape[0], chunk_size)
    ]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def span_prefix(side: Side, temperature: float, chunk_size: int) -> torch.Tensor:
    """``sum_{j < m} max(log p(y_j), log 1e-8)`` of each span [G]: the log-probability of its tokens before the last
    (only those rows' log-probabilities are computed)."""
    import torch

    is_last = torch.zeros_like(side.span_of, dtype=torch.bool)
    is_last[side.last] = True
    earlier = ((side.span_of >= 0) & ~is_last).nonzero().squeeze(1)
    token_lp = token_log_probs(side, earlier, temperature, chunk_size).clamp_min(LOG_FLOOR)
    return torch.zeros(side.last.shape[0], device=token_lp.device).index_add(0, side.span_of[earlier], token_lp)


def weighted_span_loss(
    spec: CrossSpec, student: Side, teacher: Side, shared: SharedVocab | None, weights: torch.Tensor
) -> torch.Tensor:
    """``sum_g weights_g * loss_g`` over the spans of a batch (module docstring; ``weights`` [G]), the student's side
    with gradients: the span prefixes from per-token log-probabilities (:func:`token_log_probs`), then the span
    distributions and losses a chunk of spans at a time (:func:`kdlab.losses.chunked.chunked_token_loss`, which
    takes the gradient w.r.t. the chunk's logits and prefixes in the forward pass: no chunk is computed twice)."""
    import torch

    from kdlab.losses.chunked import chunked_token_loss

    tau = spec.temperature
    s_prefix = span_prefix(student, tau, spec.chunk_size)
    with torch.no_grad():
        t_prefix = span_prefix(teacher, tau, spec.chunk_size)
        t_last = teacher.hidden[teacher.last]
    t_weight = teacher.weight.detach()

    def chunk_loss(logits: torch.Tensor, start: int, end: int, s_pre: torch.Tensor) -> torch.Tensor:
        q_s = (logits / tau).log_softmax(-1).add(s_pre[:, None]).exp()
        with torch.no_grad():
            t_logits = upcast(t_last[start:end] @ t_weight.T)
            q_t = (t_logits / tau).log_softmax(-1).add(t_prefix[start:end, None]).exp()
        return weights[start:end] * span_loss(spec, q_s, q_t, shared)

    return chunked_token_loss(student.hidden[student.last], student.weight, chunk_loss, spec.chunk_size, s_prefix)


def cross_tokenizer_objective(
    spec: CrossSpec, student: Side, teacher: Side, span_tokens: torch.Tensor, shared: SharedVocab | None, parts=None
) -> torch.Tensor:
    """``(1 - w) * sum_n CE_n + w * tau^2 * sum_g n_g * loss_g`` (module docstring) over a micro-batch: a scalar to
    divide by the response tokens. ``span_tokens`` [G] is n_g; ``parts`` (:class:`kdlab.losses.LossParts`) gets the
    KD and CE parts for logging."""
    from kdlab.losses.chunked import chunked_ce_loss

    kd = spec.kd_weight * spec.temperature**2 * weighted_span_loss(spec, student, teacher, shared, span_tokens.float())
    total = kd
    if spec.kd_weight < 1:
        total = total + (1 - spec.kd_weight) * chunked_ce_loss(
            student.hidden, student.weight, student.targets, spec.chunk_size
        )
    if parts is not None:
        parts.add(total, kd)
    return total
